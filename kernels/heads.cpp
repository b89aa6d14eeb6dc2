#include "kernels/heads.h"

#include <stdexcept>

namespace moe {

Heads::Heads(Tensor whole) : t(whole), count(whole.ndim == 4 ? whole.dim(2) : 0) {}

Heads::Heads(Tensor packed, int64_t first_head, int64_t heads) : t(packed), first(first_head), count(heads) {
    if (packed.ndim != 4 || first < 0 || count < 0 || first + count > packed.dim(2))
        throw std::logic_error("heads [" + std::to_string(first) + ", " + std::to_string(first + count) + ") of " +
                               packed.shape_str() + ": not heads of a [B,T,heads,hd] tensor");
}

std::string Heads::str() const {
    std::string s = t.shape_str();
    if (t.ndim == 4 && (first != 0 || count != t.dim(2)))
        s += " heads " + std::to_string(first) + ".." + std::to_string(first + count - 1);
    return s;
}

}  // namespace moe

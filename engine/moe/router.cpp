#include "engine/moe/router.h"

#include "engine/moe/learned_router.h"
#include "engine/moe/token_id_router.h"

namespace moe {

std::unique_ptr<Router> make_router(const ModelConfig& cfg, ParameterSet& params, int layer) {
    switch (cfg.moe.router) {
        case RouterKind::learned: return std::make_unique<LearnedRouter>(cfg, params, layer);
        case RouterKind::token_id: return std::make_unique<TokenIdRouter>(cfg.moe);
    }
    throw std::logic_error("make_router: unknown router kind");
}

}  // namespace moe

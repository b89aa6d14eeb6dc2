#include "engine/train/parity.h"

#include <cstdio>

#include "engine/model/model.h"
#include "engine/io/safetensors.h"
#include "engine/io/files.h"
#include "engine/io/weights_io.h"

namespace moe {

namespace {
std::string g17(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}
}  // namespace

double run_parity(const ModelConfig& cfg, uint64_t seed, Ops& ops, const ParityRequest& req) {
    SafetensorsFile batch(req.batch);
    for (const char* name : {"inputs", "targets"})
        if (!batch.has(name))
            throw DataError("batch '" + req.batch + "' has no tensor '" + name + "' (I32 [B, T] expected)");
    const auto& shape = batch.info("inputs").shape;
    if (shape.size() != 2) throw DataError("batch '" + req.batch + "': 'inputs' must be I32 [B, T]");
    const int B = int(shape[0]), T = int(shape[1]);
    std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
    batch.read("inputs", "I32", shape, inputs.data());
    batch.read("targets", "I32", shape, targets.data());
    for (size_t i = 0; i < inputs.size(); ++i)
        for (int32_t id : {inputs[i], targets[i]})
            if (id < 0 || id >= cfg.vocab_size)
                throw DataError("batch '" + req.batch + "': token " + std::to_string(id) + " at offset " +
                                std::to_string(i) + " is outside [0, model.vocab_size=" +
                                std::to_string(cfg.vocab_size) + ")");

    // The CPU computes in the asked dtype; a GPU in its training precision.
    const Precision precision = ops.device() == Device::CPU ? Precision(req.dtype) : ops.training_precision();
    Model model(cfg, ops, precision, B, T);
    ParameterSet& params = model.params();
    params.initialize(seed);
    if (!req.init_from.empty()) load_weights(req.init_from, params);
    params.refresh_work();
    const ForwardResult r = model.forward(inputs.data(), targets.data(), 1.0);
    model.backward(Write::overwrite);
    save_tensors(req.dump_grads, params.named(ParameterSet::Slot::Grad), ops,
                 {{"loss", g17(r.loss + r.aux)}, {"cross_entropy", g17(r.loss)}, {"aux", g17(r.aux)}});
    return r.loss + r.aux;
}

}  // namespace moe

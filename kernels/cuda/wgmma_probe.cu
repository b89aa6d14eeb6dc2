// Whether this process can run wgmma on its GPU: the code the driver picked
// for it was compiled for sm_90a (the only target with wgmma), which a kernel
// compiled once per target reports. Also where a build without code for the
// GPU is told so, at construction rather than at the first op.
#include <string>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

__global__ void wgmma_probe_kernel(int* built_for_sm90a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    *built_for_sm90a = 1;
#else
    *built_for_sm90a = 0;
#endif
}

}  // namespace

bool CudaOps::probe_wgmma() {
    auto* flag = static_cast<int*>(upload_);
    wgmma_probe_kernel<<<1, 1, 0, stream_>>>(flag);
    const cudaError_t launched = cudaGetLastError();
    if (launched == cudaErrorNoKernelImageForDevice) {
        cudaDeviceProp prop{};
        MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
        throw std::runtime_error("this build has no code for GPU " + std::to_string(device_) + " (" + prop.name +
                                 ", compute " + std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                                 "): configure with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(prop.major) +
                                 std::to_string(prop.minor) + " and rebuild");
    }
    MOE_CUDA_CHECK(launched);
    int built = 0;
    MOE_CUDA_CHECK(cudaMemcpyAsync(&built, flag, sizeof built, cudaMemcpyDeviceToHost, stream_));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return built == 1;
}

}  // namespace moe

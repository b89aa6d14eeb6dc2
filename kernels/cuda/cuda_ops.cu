// CudaOps' device, stream, cuBLASLt handle and scratch; memory and the
// host <-> device copies.
#include <cstdlib>
#include <string>

#include "kernels/cuda/common.cuh"

namespace moe {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
    throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                             ") in " + call + " at " + file + ":" + std::to_string(line));
}

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // no driver or no device: clear the sticky error
        return 0;
    }
    return n;
}

size_t cuda_device_memory(int device) {
    cudaDeviceProp prop{};
    MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    return prop.totalGlobalMem;
}

namespace {
void check_lt(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error(std::string("cuBLASLt: ") + what + " failed with status " + std::to_string(int(s)));
}
}  // namespace

CudaOps::CudaOps(int device) : device_(device) {
    const int count = cuda_device_count();
    if (device < 0 || device >= count)
        throw std::runtime_error("CUDA device " + std::to_string(device) + " does not exist: this process sees " +
                                 std::to_string(count) + " GPU(s) (check CUDA_VISIBLE_DEVICES)");
    MOE_CUDA_CHECK(cudaSetDevice(device));
    MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    check_lt(cublasLtCreate(&lt_), "cublasLtCreate");
    MOE_CUDA_CHECK(cudaMalloc(&lt_workspace_, kLtWorkspaceBytes));
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
    for (int i = 0; i < kExpertLanes; ++i) {
        MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&lanes_[i], cudaStreamNonBlocking));
        MOE_CUDA_CHECK(cudaMalloc(&lane_workspaces_[i], kLtWorkspaceBytes));
        MOE_CUDA_CHECK(cudaEventCreateWithFlags(&joined_[i], cudaEventDisableTiming));
    }
    MOE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&partials_), kMaxPartials * sizeof(double)));
    MOE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_results_), kMaxPartials * sizeof(double)));
    MOE_CUDA_CHECK(cudaMalloc(&upload_, kUploadBytes));
    wgmma_available_ = probe_wgmma();
    attention_wgmma_ = attention_wgmma_choice(std::getenv("MOE_CUDA_ATTENTION"), wgmma_available_);
    expert_streams_ = expert_streams_choice(std::getenv("MOE_CUDA_EXPERT_STREAMS"));
    attention_heads_ = attention_heads_choice(std::getenv("MOE_CUDA_ATTENTION_HEADS"));
}

int attention_heads_choice(const char* setting) {
    if (!setting) return CudaOps::kMaxAttentionHeads;
    const std::string value = setting;
    if (value == "1" || value == "2" || value == "4") return value[0] - '0';
    throw std::invalid_argument("MOE_CUDA_ATTENTION_HEADS=" + value +
                                " is not a choice: 1, 2 or 4 query heads a block at most (unset: 4)");
}

bool attention_wgmma_choice(const char* setting, bool available) {
    const std::string want = setting ? setting : "";
    if (want.empty()) return available;
    if (want == "mma_sync") return false;
    if (want == "wgmma") {
        if (!available)
            throw std::runtime_error(
                "MOE_CUDA_ATTENTION=wgmma, but this GPU or build has no wgmma (it needs a compute 9.0 GPU and "
                "sm_90a in CMAKE_CUDA_ARCHITECTURES): unset it to use mma.sync");
        return true;
    }
    throw std::invalid_argument("MOE_CUDA_ATTENTION=" + want +
                                " is not a choice: wgmma, mma_sync, or unset for wgmma where the GPU has it");
}

int expert_streams_choice(const char* setting) {
    if (!setting) return CudaOps::kExpertLanes;
    const std::string value = setting;
    if (value.size() == 1 && value[0] >= '0' && value[0] <= '0' + CudaOps::kExpertLanes) return value[0] - '0';
    throw std::invalid_argument("MOE_CUDA_EXPERT_STREAMS=" + value + " is not a count of side streams from 0 to " +
                                std::to_string(CudaOps::kExpertLanes) +
                                " (0: experts' GEMMs on the main stream; unset: " +
                                std::to_string(CudaOps::kExpertLanes) + ")");
}

void CudaOps::set_attention_wgmma(bool on) {
    if (on && !wgmma_available_)
        throw std::invalid_argument("set_attention_wgmma: this GPU or build has no wgmma (compute 9.0 and sm_90a)");
    attention_wgmma_ = on;
}

void CudaOps::set_attention_heads(int heads) {
    if (heads != 1 && heads != 2 && heads != 4)
        throw std::invalid_argument("set_attention_heads: " + std::to_string(heads) + " is not 1, 2 or 4");
    attention_heads_ = heads;
}

CudaOps::~CudaOps() {
    // Errors here cannot be reported; free what exists.
    if (stream_) cudaStreamSynchronize(stream_);
    destroy_matmul_plans(matmul_plans_);
    cudaFree(scratch_);
    cudaFree(rope_table_);
    cudaFree(upload_);
    cudaFreeHost(host_results_);
    cudaFree(partials_);
    cudaFree(lt_workspace_);
    for (int i = 0; i < kExpertLanes; ++i) {
        if (lanes_[i]) cudaStreamDestroy(lanes_[i]);
        cudaFree(lane_workspaces_[i]);
        if (joined_[i]) cudaEventDestroy(joined_[i]);
    }
    if (fork_) cudaEventDestroy(fork_);
    if (lt_) cublasLtDestroy(lt_);
    if (stream_) cudaStreamDestroy(stream_);
}

std::string CudaOps::device_name() const {
    // The PCI bus id tells GPUs apart where the index cannot: a launcher that
    // gives each rank one GPU (srun --gpus-per-task=1, a per-rank
    // CUDA_VISIBLE_DEVICES) shows every rank its GPU as cuda:0.
    cudaDeviceProp prop{};
    char bus[32] = {};
    std::string name = "cuda:" + std::to_string(device_), details;
    if (cudaGetDeviceProperties(&prop, device_) == cudaSuccess) details = prop.name;
    if (cudaDeviceGetPCIBusId(bus, int(sizeof bus), device_) == cudaSuccess)
        details += (details.empty() ? "PCI " : ", PCI ") + std::string(bus);
    return details.empty() ? name : name + " (" + details + ")";
}

void CudaOps::synchronize() { MOE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

size_t CudaOps::device_memory_used() const {
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return 0;
    return total - free_bytes;
}

size_t CudaOps::memory_available() const {
    size_t free_bytes = 0, total = 0;
    MOE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    return free_bytes;
}

void* CudaOps::alloc(size_t bytes) {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free_bytes = 0, total = 0;
        cudaMemGetInfo(&free_bytes, &total);
        throw OutOfDeviceMemory(bytes, free_bytes, total, device_name());
    }
    MOE_CUDA_CHECK(err);
    MOE_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return p;
}

void CudaOps::release(void* p) {
    if (!p) return;
    cudaStreamSynchronize(stream_);
    cudaFree(p);
}

void* CudaOps::scratch(size_t bytes) {
    if (bytes <= scratch_bytes_) return scratch_;
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // queued work may still use the old one
    MOE_CUDA_CHECK(cudaFree(scratch_));
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    MOE_CUDA_CHECK(cudaMalloc(&scratch_, bytes));
    scratch_bytes_ = bytes;
    return scratch_;
}

void CudaOps::copy_from_host(Tensor dst, const void* src) { uploads_.copy(dst.data, src, dst.bytes(), stream_); }

void CudaOps::copy_to_host(void* dst, Tensor src) {
    if (!src.bytes()) return;
    MOE_CUDA_CHECK(cudaMemcpyAsync(dst, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

}  // namespace moe

#!/usr/bin/env python3
"""Writes the attention kernels' sources for emulated blocks.

usage: emulate_kernels.py SOURCE_ROOT OUT_DIR

Copies kernels/cuda's attention files into OUT_DIR with the body of each
inline-PTX wrapper replaced by a call to its model in emulated_ptx.h, and
attention.cu's kernels (without the host side, which launches on a GPU) as
kernels/cuda/attention_kernels.inc. Everything else is the tree's code as it
is. A wrapper this script does not know, or one it no longer finds, stops it
with the name: update the models and this list together.
"""
import os
import re
import sys


def replace_body(text, signature, body, where):
    """The function whose definition matches `signature` gets `body`."""
    m = re.search(signature, text)
    if not m:
        sys.exit(f"emulate_kernels.py: {where}: no function matching {signature!r}; update tests/emulated")
    start = text.index('{', m.end() - 1)
    depth = 0
    for end in range(start, len(text)):
        depth += {'{': 1, '}': -1}.get(text[end], 0)
        if depth == 0:
            break
    return text[:start] + '{ ' + body + ' }' + text[end + 1:]


def no_ptx_left(text, where):
    if re.search(r'\basm\s*(volatile\s*)?\(', text):
        sys.exit(f"emulate_kernels.py: {where} holds inline PTX this script does not replace; update tests/emulated")


def main():
    root, out = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.join(out, 'kernels', 'cuda'), exist_ok=True)

    def read(path):
        with open(os.path.join(root, path)) as f:
            return f.read()

    def write(path, text):
        no_ptx_left(text, path)
        with open(os.path.join(out, path), 'w') as f:
            f.write(text)

    e = '::moe::emulated::'
    path = 'kernels/cuda/attention_tiles.cuh'
    s = read(path)
    s = s.replace('#include "kernels/cuda/common.cuh"',
                  '#include "tests/emulated/emulated_ptx.h"\n#include "kernels/cuda/common.cuh"', 1)
    for sig, body in [(r'uint32_t shared_address\(const void\* p\) ', f'return {e}shared_address(p);'),
                      (r'void cp_async16\(void\* dst, const void\* src\) ', 'std::memcpy(dst, src, 16);'),
                      (r'void cp_async4\(void\* dst, const void\* src\) ', 'std::memcpy(dst, src, 4);'),
                      (r'void cp_async_commit\(\) ', ''),
                      (r'void cp_async_wait\(\) ', '')]:
        s = replace_body(s, sig, body, path)
    write(path, s)

    path = 'kernels/cuda/attention_warp_mma.cuh'
    s = read(path)
    for sig, body in [(r'void ldsm_x4\(uint32_t \(&r\)\[4\], const bf16\* p\) ', f'{e}ldmatrix_x4(r, p, false);'),
                      (r'void ldsm_x4_trans\(uint32_t \(&r\)\[4\], const bf16\* p\) ', f'{e}ldmatrix_x4(r, p, true);'),
                      (r'void mma16816\(float \(&c\)\[4\], const uint32_t \(&a\)\[4\], uint32_t b0, uint32_t b1\) ',
                       f'{e}mma_m16n8k16(c, a, b0, b1);')]:
        s = replace_body(s, sig, body, path)
    write(path, s)

    path = 'kernels/cuda/wgmma.cuh'
    s = read(path)
    s, n = re.subn(r'#if defined\(__CUDA_ARCH_FEAT_SM90_ALL\)\n'
                   r'#define MOE_WGMMA_ASM\(\.\.\.\) asm volatile\(__VA_ARGS__\)\n'
                   r'#else\n#define MOE_WGMMA_ASM\(\.\.\.\) __trap\(\)\n#endif',
                   '#define MOE_WGMMA_ASM(...) ((void)0)', s)
    if n != 1:
        sys.exit(f"emulate_kernels.py: {path}: MOE_WGMMA_ASM's definition changed; update tests/emulated")
    s = re.sub(r'asm volatile\("" : "\+[fr]"\([^)]*\)::"memory"\);', '(void)0;', s)  # pin: nothing to do here
    for sig, body in [(r'void wait\(\) ', f'{e}wgmma_wait();'),
                      (r'void mma_ss\(float \(&d\)\[N / 8\]\[4\], uint64_t a, uint64_t b\) ',
                       f'{e}wgmma_ss<N>(d, a, b);'),
                      (r'void mma_rs\(float \(&d\)\[N / 8\]\[4\], const uint32_t \(&a\)\[4\], uint64_t b\) ',
                       f'{e}wgmma_rs<N>(d, a, b, true);')]:
        s = replace_body(s, sig, body, path)
    write(path, s)

    path = 'kernels/cuda/attention.cu'
    s = read(path)
    shared = 'extern __shared__ __align__(16) unsigned char smem[];'
    host = '// ---- host side'
    if shared not in s or host not in s:
        sys.exit(f"emulate_kernels.py: {path}: its shared memory or its host side moved; update tests/emulated")
    s = s.replace(shared, f'unsigned char* smem = {e}block.shared;')
    s = s[:s.index(host)] + '}  // namespace\n}  // namespace moe\n'
    no_ptx_left(s, path)
    with open(os.path.join(out, 'kernels/cuda/attention_kernels.inc'), 'w') as f:
        f.write(s)


if __name__ == '__main__':
    main()

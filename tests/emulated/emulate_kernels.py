#!/usr/bin/env python3
"""Writes the CUDA backend's sources for emulated blocks.

usage: emulate_kernels.py SOURCE_ROOT OUT_DIR

Into OUT_DIR/kernels/cuda:
- the attention headers and fast_math.cuh with the body of each inline-PTX
  wrapper replaced by a call to its model in emulated_ptx.h;
- every kernels/cuda/NAME.cu as NAME.cpp, plain C++: each launch
  `kernel<<<grid, block, shared, stream>>>(args);` becomes
  emulated::launch_kernel(grid, block, shared, stream, kernel's address, call,
  args) (with null for the address where a template's arguments come from the
  call's), `__shared__` variables are the block's (a
  static: blocks run one at a time), dynamic shared memory is the emulated
  block's, and cub comes from emulated_cuda.h (cuBLASLt from
  emulated_cublaslt.cpp).
Everything else is the tree's code as it is. A wrapper or form this script
does not know, or one it no longer finds, stops it with the name: update
tests/emulated and this script together.
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

    path = 'kernels/cuda/fast_math.cuh'
    s = read(path)
    s = s.replace('#pragma once\n', '#pragma once\n#include "tests/emulated/emulated_ptx.h"\n', 1)
    for sig, body in [(r'float exp2_ftz\(float x\) ', f'return {e}exp2_ftz(x);'),
                      (r'float rcp_ftz\(float x\) ', f'return {e}rcp_ftz(x);'),
                      (r'float log2_ftz\(float x\) ', f'return {e}log2_ftz(x);')]:
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
    for sig, body in [(r'void commit\(\) ', f'{e}wgmma_commit();'),
                      (r'void wait\(\) ', f'{e}wgmma_wait(pending);'),
                      (r'void mma_ss\(float \(&d\)\[N / 8\]\[4\], uint64_t a, uint64_t b\) ',
                       f'{e}wgmma_ss<N>(d, a, b);'),
                      (r'void mma_rs\(float \(&d\)\[N / 8\]\[4\], const uint32_t \(&a\)\[4\], uint64_t b\) ',
                       f'{e}wgmma_rs<N>(d, a, b, true);')]:
        s = replace_body(s, sig, body, path)
    write(path, s)

    for name in sorted(os.listdir(os.path.join(root, 'kernels/cuda'))):
        if not name.endswith('.cu'):
            continue
        path = 'kernels/cuda/' + name
        s = plain_cpp(read(path), path)
        write(path[:-3] + '.cpp', '#include "tests/emulated/emulated_cuda.h"\n' + s)


def split_top_level(text):
    """Splits at the commas outside brackets."""
    parts, depth, current = [], 0, ''
    for ch in text:
        depth += (ch in '([{<') - (ch in ')]}>')
        if ch == ',' and depth == 0:
            parts.append(current.strip())
            current = ''
        else:
            current += ch
    return parts + [current.strip()]


def plain_cpp(s, where):
    """A .cu's source as C++ for emulated blocks (see the module's text)."""
    e = '::moe::emulated::'
    s = re.sub(r'extern __shared__ (__align__\(\d+\) )?([\w ]+?) (\w+)\[\];',
               lambda m: f'{m.group(2)}* {m.group(3)} = reinterpret_cast<{m.group(2)}*>({e}block.shared);', s)
    if 'extern __shared__' in s:
        sys.exit(f"emulate_kernels.py: {where}: a form of extern __shared__ it does not know; update tests/emulated")
    s = re.sub(r'\b__shared__ ', 'static ', s)
    s = s.replace('#include <cub/cub.cuh>\n', '')
    # Kernel templates, whose arguments a launch may leave to the call's types.
    templates = set(re.findall(r'template\s*<[^;{]*?>\s*__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)', s))
    out = ''
    while (start := s.find('<<<')) >= 0:
        line = s.rfind('\n', 0, start) + 1
        kernel = s[line:start]
        indent = kernel[:len(kernel) - len(kernel.lstrip())]
        config_end = s.index('>>>', start)
        config = split_top_level(s[start + 3:config_end])
        if len(config) != 4:
            sys.exit(f"emulate_kernels.py: {where}: a launch without all of grid, block, "
                     f"shared bytes and stream: {s[line:config_end + 3]}")
        open_paren = s.index('(', config_end)
        depth = 0
        for close in range(open_paren, len(s)):
            depth += (s[close] == '(') - (s[close] == ')')
            if depth == 0:
                break
        args = s[open_paren + 1:close].strip()
        name = kernel.strip()
        if not re.fullmatch(r'[\w:<>(), ]+', name):
            sys.exit(f"emulate_kernels.py: {where}: a launch whose kernel is not named on the line of its <<<: "
                     f"{s[line:config_end + 3]!r}; keep the name and <<< on one line")
        address = 'nullptr' if name in templates else f'reinterpret_cast<const void*>(+{name})'
        out += (s[:line] + f'{indent}{e}launch_kernel(dim3({config[0]}), dim3({config[1]}), size_t({config[2]}), '
                f'cudaStream_t({config[3]}), {address}, [=](auto... a) {{ {name}(a...); }}'
                f'{", " if args else ""}{args});')
        s = s[s.index(';', close) + 1:]
    s = out + s
    no_ptx_left(s, where)
    return s


if __name__ == '__main__':
    main()

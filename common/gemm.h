/* gemm.h: the GEMM path of the scoring pass's linear layers, chosen once at model load.
 *
 * Paths: "openblas-f32" (OpenBLAS sgemm on f32 weights, the fallback, always built),
 * "onednn-f32" (oneDNN's sgemm, which picks the widest ISA present, e.g. AVX-512) and
 * "onednn-bf16" (oneDNN matmul with bf16 weights and bf16 activations, f32 accumulation and
 * output; AVX512-BF16 where the CPU has it) and "onednn-int8" (weights quantized to s8 at load
 * with one scale per output channel, activations quantized to s8 per call with one scale per
 * row, s32 accumulation (VNNI where the CPU has it), f32 output times both scales). The oneDNN
 * paths exist in builds with MR_ONEDNN (CMake option, ON when libdnnl is found). A mode string
 * picks one: "auto" (bf16 when oneDNN is built, the CPU has AVX512-BF16 and the checkpoint's
 * matrices are bf16; else onednn-f32 when built; else openblas-f32), "f32" (onednn-f32 when
 * built, else openblas-f32), "bf16", "int8" (never chosen by auto: it changes scores more than
 * bf16 does), "openblas". Drift of each path against f32: docs/perf.md.
 *
 * A mr_gemm_ctx is per scoring context (per thread): it holds the primitives (one per weight
 * shape, with a run-time row count) and the memory objects (one per power-of-two row block),
 * all made at mr_gemm_ctx_new, and the bf16 or s8 copy of the activations; mr_gemm_wt allocates
 * nothing in this code. */
#ifndef MR_GEMM_H
#define MR_GEMM_H

#include <stdint.h>

#include "mr_err.h"
#include "safetensors.h"

typedef enum mr_gemm_path {
    MR_GEMM_OPENBLAS_F32 = 0,
    MR_GEMM_ONEDNN_F32 = 1,
    MR_GEMM_ONEDNN_BF16 = 2,
    MR_GEMM_ONEDNN_INT8 = 3,
} mr_gemm_path;

#define MR_GEMM_MAX_SHAPES 8 /* distinct (out, in) weight shapes one context multiplies by */

/* Resolves mode (NULL: the environment's MR_GEMM, else "auto") for a checkpoint whose layer
 * matrices are all bf16 (all_bf16 nonzero) or not. MR_EINVAL for an unknown mode,
 * MR_EUNSUPPORTED for "bf16" in a build without oneDNN. */
int mr_gemm_resolve(const char *mode, int all_bf16, mr_gemm_path *out, mr_err *err);
/* "openblas-f32", "onednn-f32", "onednn-bf16", "onednn-int8" */
const char *mr_gemm_path_name(mr_gemm_path p);
/* The dtype the f32 and bf16 paths want their weight tensors in (F32 or BF16). The int8 path
 * takes mr_gemm_q8 weights instead (F32 is returned for it: the dtype it quantizes from). */
mr_dtype mr_gemm_weight_dtype(mr_gemm_path p);

/* Symmetric per-row quantization of x (n, in) to s8: scale[i] = max_k |x[i][k]| / 127 (0 for a
 * row of zeros), q[i][k] = x[i][k] * (127 / max_k |x[i][k]|) rounded half away from zero, in
 * [-127, 127], so x[i][k] ~ q[i][k] * scale[i] within scale[i] / 2 (plus f32 rounding). A row
 * holding Inf or NaN gets scale NaN (its products are NaN, as in f32). The int8 path's weights
 * (rows = output channels) and activations (rows = tokens) both go through it. */
void mr_gemm_quantize_rows(int8_t *q, float *scale, const float *x, int n, int in);

/* The int8 path's form of a weight W (out, in): q (out, in) s8 row-major and one scale per
 * output channel, W[o][k] ~ q[o][k] * scale[o]. Owned; paired new/free. */
typedef struct mr_gemm_q8 {
    int8_t *q;
    float *scale;
    int out, in;
} mr_gemm_q8;
/* Quantizes t (2-D (out, in), any dtype) into w. On error w is zeroed. */
int mr_gemm_q8_new(mr_gemm_q8 *w, const mr_tensor *t, mr_err *err);
/* Frees what w owns and zeroes it; accepts a zeroed w. */
void mr_gemm_q8_free(mr_gemm_q8 *w);

typedef struct mr_gemm_ctx mr_gemm_ctx;
/* A context for path p: shapes (n_shapes <= MR_GEMM_MAX_SHAPES) lists every (out, in) of the
 * weights it will multiply by, max_m the most rows of one call. *g is NULL on error. */
int mr_gemm_ctx_new(mr_gemm_ctx **g, mr_gemm_path p, const int (*shapes)[2], int n_shapes,
                    int max_m, mr_err *err);
void mr_gemm_ctx_free(mr_gemm_ctx *g);
/* y (n, out) = x (n, in) . W^T, W (out, in) row-major in mr_gemm_weight_dtype(path) (on the
 * int8 path w points to a mr_gemm_q8), n <= max_m, (out, in) one of the shapes given at new.
 * Returns 0 or a negative MR_E* (an unknown shape, a oneDNN failure). */
int mr_gemm_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in, int out);
/* The same product for an x whose first n rows hold the same values as the previous call's x
 * (same pointer and in, n no more rows than it had; e.g. v after k, up after gate): the bf16
 * and int8 paths skip converting the activations again. Any other x is converted as by
 * mr_gemm_wt. */
int mr_gemm_wt_again(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in,
                     int out);

#endif

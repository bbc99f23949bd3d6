/* module.h: what the GPU backend's module (libmrank_cuda.so, built from common/cuda/) exports
 * to the process that loads it (common/cuda_module.c): one record naming its two tables and the
 * sizes of the engine structures it was compiled against. Plain C, shared by both sides. The
 * loader refuses a module whose record differs, so a binary and a module from different builds
 * fail with a message instead of reading each other's structures wrongly. */
#ifndef MR_CUDA_MODULE_H
#define MR_CUDA_MODULE_H

#include "backend.h"

/* Raised whenever the record or the mr_backend slots change meaning. */
#define MR_CUDA_MODULE_ABI 1
/* The symbol the loader looks up (dlsym). */
#define MR_CUDA_MODULE_SYMBOL "mr_cuda_module_record"

/* How many sizes MR_CUDA_MODULE_SIZES lists (the loader asserts it at compile time). */
#define MR_CUDA_MODULE_N_SIZES 5

typedef struct mr_cuda_module {
    int abi;                  /* MR_CUDA_MODULE_ABI */
    unsigned sizes[MR_CUDA_MODULE_N_SIZES]; /* MR_CUDA_MODULE_SIZES as the module saw them */
    const mr_backend *bf16;   /* the "cuda" table */
    const mr_backend *fp8;    /* the "cuda-fp8" table */
} mr_cuda_module;

/* The structures crossing the boundary (a changed field changes a size; not proof, a tripwire). */
#define MR_CUDA_MODULE_SIZES                                                                    \
    {(unsigned)sizeof(mr_backend), (unsigned)sizeof(mr_model), (unsigned)sizeof(mr_row),         \
     (unsigned)sizeof(mr_run_opts), (unsigned)sizeof(mr_err)}

#endif

/* fake_cuda_module.c: stand-ins for libmrank_cuda.so that common/cuda_module.c must refuse,
 * for test_backend's "module" entries (CMakeLists.txt). Built twice: with MR_FAKE_RECORD, a
 * module whose record carries another ABI number (a module from another build); without it, a
 * shared object with no record at all (not an mrank module). Plain C, no CUDA: the loader's
 * refusals are tested in every build, sanitizer builds included. */
#include "cuda/module.h"

#ifdef MR_FAKE_RECORD
__attribute__((visibility("default"))) const mr_cuda_module mr_cuda_module_record = {
    MR_CUDA_MODULE_ABI + 1000, /* abi: not this build's */
    MR_CUDA_MODULE_SIZES,      /* sizes */
    NULL,                      /* bf16: never reached */
    NULL,                      /* fp8: never reached */
};
#else
__attribute__((visibility("default"))) const int mr_fake_module_without_record = 1;
#endif

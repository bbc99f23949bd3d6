/* fake_cuda_module.c: stand-ins for libmrank_cuda.so that common/cuda_module.c must refuse,
 * for test_backend's "module" entries (CMakeLists.txt). Built once per MR_FAKE value: 1, a
 * record with another ABI number (a module from another build); 2, this ABI with one structure
 * size off (a build where a shared structure changed); 3, a matching record without backend
 * tables; undefined, a shared object with no record at all (not an mrank module). Plain C, no
 * CUDA: the loader's refusals are tested in every build, sanitizer builds included. */
#include "cuda/module.h"

#ifdef MR_FAKE
__attribute__((visibility("default"))) mr_cuda_module mr_cuda_module_record = {
    MR_FAKE == 1 ? MR_CUDA_MODULE_ABI + 1000 : MR_CUDA_MODULE_ABI, /* abi */
    MR_CUDA_MODULE_SIZES,                                           /* sizes: see below */
    NULL,                                                           /* bf16 */
    NULL,                                                           /* fp8 */
};

/* Runs when the loader's dlopen maps this object, before its dlsym reads the record. */
__attribute__((constructor)) static void fake_sizes(void) {
    if (MR_FAKE == 2) mr_cuda_module_record.sizes[0] += 1;
}
#else
__attribute__((visibility("default"))) const int mr_fake_module_without_record = 1;
#endif

/* safetensors.h: memory-mapped safetensors files, single or sharded, and a streaming writer.
 *
 * Reading: every header, offset, shape and dtype is validated before a tensor is handed out;
 * a malformed or truncated file gives MR_EFORMAT with a message naming the file and tensor.
 * Data stays in the mapping (MAP_PRIVATE, read-only until mr_st_make_writable), so opening a
 * 14 GB checkpoint costs address space, not memory. Writing streams tensor data in order, so a
 * checkpoint larger than memory can be produced. Not a model loader: tensor names mean nothing
 * here. Users: model.c, lora.c, seeded.c (`mrank init-checkpoint`), the trainer; config.c uses
 * only the dtype helpers. */
#ifndef MR_SAFETENSORS_H
#define MR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "mr_err.h"

typedef enum mr_dtype { MR_DT_F32 = 0, MR_DT_F16 = 1, MR_DT_BF16 = 2 } mr_dtype;

#define MR_TENSOR_MAX_DIMS 4

typedef struct mr_tensor {
    const char *name;                 /* owned by the set */
    const char *file;                 /* path of the file holding it, owned by the set */
    mr_dtype dtype;
    int ndim;                         /* 0..MR_TENSOR_MAX_DIMS */
    int64_t shape[MR_TENSOR_MAX_DIMS];
    int64_t numel;                    /* product of shape (1 for ndim 0) */
    void *data;                       /* inside the mapping; numel * mr_dtype_size(dtype) bytes.
                                         Offsets are arbitrary, so data may be unaligned for
                                         its dtype (F32 included): read it with mr_to_f32 or
                                         memcpy, never through a float or uint16_t pointer */
} mr_tensor;

typedef struct mr_st_file mr_st_file; /* one mapped file (private) */

typedef struct mr_st_set {
    mr_st_file **files;
    int n_files;
    mr_tensor *tensors;               /* all tensors of all files, sorted by name */
    size_t n_tensors;
} mr_st_set;

size_t mr_dtype_size(mr_dtype dt);
const char *mr_dtype_name(mr_dtype dt);          /* "F32", "F16", "BF16" */
int mr_dtype_parse(const char *s, mr_dtype *out); /* accepts F32/F16/BF16 and f32/bf16/f16,
                                                     float32/float16/bfloat16; MR_EINVAL else */

/* Opens a checkpoint folder: DIR/model.safetensors, or every shard named in
 * DIR/model.safetensors.index.json (weight_map), or, failing both, every *.safetensors in DIR.
 * set is caller-owned; on error it is left zeroed, else release it with mr_st_close. */
int mr_st_load_dir(mr_st_set *set, const char *dir, mr_err *err);
/* Opens one file (e.g. adapter_model.safetensors); same contract as mr_st_load_dir. */
int mr_st_load_file(mr_st_set *set, const char *path, mr_err *err);
/* A lookup, not an error: NULL when absent (mr_st_get reports MR_ENOTFOUND). O(log n). */
const mr_tensor *mr_st_find(const mr_st_set *set, const char *name);
/* Finds name and checks dtype-independent shape (ndim dims); MR_ENOTFOUND / MR_EFORMAT
 * with a message naming file, tensor, expected and actual shape. */
int mr_st_get(const mr_st_set *set, const char *name, int ndim, const int64_t *shape,
              const mr_tensor **out, mr_err *err);
/* Makes the pages of t writable (copy-on-write, never written back to the file). */
int mr_st_make_writable(const mr_st_set *set, const mr_tensor *t, mr_err *err);
/* Idempotent; accepts a zeroed set. */
void mr_st_close(mr_st_set *set);

/* Converts n elements of src (dtype dt) to f32. */
void mr_to_f32(float *dst, const void *src, mr_dtype dt, size_t n);
/* Converts n f32 values to dtype dt (round to nearest even for bf16/f16). */
void mr_from_f32(void *dst, const float *src, mr_dtype dt, size_t n);

/* Streaming writer: declare every tensor, then write their data in declaration order. */
typedef struct mr_st_writer mr_st_writer;
/* A heap writer for path: data goes to path.tmp, renamed to path by a successful finish. */
int mr_st_writer_new(mr_st_writer **w, const char *path, mr_err *err);
int mr_st_writer_declare(mr_st_writer *w, const char *name, mr_dtype dt, int ndim,
                         const int64_t *shape, mr_err *err);
/* Appends n f32 values (converted to the current tensor's dtype) to the tensor being written;
 * moves to the next tensor when the current one is full. The first call writes the header. */
int mr_st_writer_put(mr_st_writer *w, const float *data, size_t n, mr_err *err);
/* Commits: checks every declared tensor was filled, closes the file and renames it into
 * place; on any error path.tmp is removed. Frees w in every case (w == NULL: MR_EINVAL). */
int mr_st_writer_finish(mr_st_writer *w, mr_err *err);
/* Abandons: closes and removes path.tmp (path is never touched) and frees w; NULL is a no-op.
 * A writer ends with exactly one of mr_st_writer_finish and mr_st_writer_free. */
void mr_st_writer_free(mr_st_writer *w);

#endif

/* fuzz_safetensors.c: libFuzzer target for the safetensors reader.
 *
 * The input is written to a temporary file and opened as a checkpoint; when it opens, every
 * tensor's first and last elements are converted (so ASan sees any data pointer outside the
 * mapping) and one tensor is made writable and written. Then the same bytes make a sharded
 * checkpoint folder, opened with mr_st_load_dir: the bytes before the first NUL are written as
 * model.safetensors.index.json (JSON text holds no NUL byte; without one, all of them), the
 * bytes after it as the shard model-00001-of-00002.safetensors (none without a NUL), next to
 * model-00002-of-00002.safetensors, a valid shard written once at start (tensors "c", F32
 * [2], and "d", BF16 [1, 3]). So the index's parsing, its shard-name checks, missing and
 * malformed shards, tensors found in two shards and the check of the index against what the
 * shards hold all follow from the input. (Until this split the index and the only shard were
 * the same bytes: an index that parses is JSON, never a safetensors file, so no index ever
 * named a shard that opened and everything after the shards' loading was unreachable.) A
 * folder that opens is checked as a file is. Every failure, of the file or of the folder, must
 * fill the message and name the file or folder. Must never crash, leak or read out of
 * bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"

static char g_dir[64], g_fixed[128];

static void write_file(const char *path, const uint8_t *data, size_t size) {
    FILE *fp = fopen(path, "wb");
    if (!fp)
        abort();
    if (size && fwrite(data, 1, size, fp) != size)
        abort();
    fclose(fp);
}

static void touch_tensors(mr_st_set *set) {
    for (size_t i = 0; i < set->n_tensors; i++) {
        const mr_tensor *t = &set->tensors[i];
        if (t->numel == 0)
            continue;
        size_t es = mr_dtype_size(t->dtype);
        float v[2];
        mr_to_f32(&v[0], t->data, t->dtype, 1);
        mr_to_f32(&v[1], (const uint8_t *)t->data + (size_t)(t->numel - 1) * es, t->dtype, 1);
        if (i == 0 && mr_st_make_writable(set, t, NULL) == 0)
            mr_from_f32(t->data, v, t->dtype, 1);
    }
    for (size_t i = 1; i < set->n_tensors; i++)
        if (strcmp(set->tensors[i - 1].name, set->tensors[i].name) >= 0)
            abort(); /* sorted and unique */
}

/* Opened: checked and closed. Refused: the message names g_dir or a path in it. */
static void check_load(int rc, mr_st_set *set, const mr_err *err) {
    if (rc == 0) {
        touch_tensors(set);
        mr_st_close(set);
    } else if (err->code == 0 || !strstr(err->msg, g_dir)) {
        abort(); /* every failure fills the message and names its file or folder */
    }
}

static void remove_dir(void) {
    unlink(g_fixed); /* the other files are unlinked after every input */
    rmdir(g_dir);
}

/* The folder and its fixed second shard, once. */
static void make_dir(void) {
    static const float c[2] = {1.5f, -2}, d[3] = {0.25f, 3, -7};
    static const int64_t c_shape[1] = {2}, d_shape[2] = {1, 3};
    mr_st_writer *w = NULL;
    mr_err err = {0};
    strcpy(g_dir, "/tmp/mr_fuzz_st_XXXXXX");
    if (!mkdtemp(g_dir))
        abort();
    snprintf(g_fixed, sizeof g_fixed, "%s/model-00002-of-00002.safetensors", g_dir);
    if (mr_st_writer_new(&w, g_fixed, &err) ||
        mr_st_writer_declare(w, "c", MR_DT_F32, 1, c_shape, &err) ||
        mr_st_writer_declare(w, "d", MR_DT_BF16, 2, d_shape, &err) ||
        mr_st_writer_put(w, c, 2, &err) || mr_st_writer_put(w, d, 3, &err)) {
        mr_st_writer_free(w);
        w = NULL;
    }
    if (!w || mr_st_writer_finish(w, &err)) {
        fprintf(stderr, "fuzz_safetensors: fixed shard: %s\n", err.msg);
        abort();
    }
    atexit(remove_dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_dir[0])
        make_dir();
    char path[128], ipath[128], spath[128];
    snprintf(path, sizeof path, "%s/x.safetensors", g_dir);
    write_file(path, data, size);
    mr_st_set set;
    mr_err err = {0};
    check_load(mr_st_load_file(&set, path, &err), &set, &err);
    /* the folder: index before the first NUL, the first shard after it */
    const uint8_t *nul = size ? memchr(data, 0, size) : NULL;
    size_t n_index = nul ? (size_t)(nul - data) : size;
    snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", g_dir);
    snprintf(spath, sizeof spath, "%s/model-00001-of-00002.safetensors", g_dir);
    write_file(ipath, data, n_index);
    if (nul)
        write_file(spath, nul + 1, size - n_index - 1);
    memset(&err, 0, sizeof err);
    check_load(mr_st_load_dir(&set, g_dir, &err), &set, &err);
    unlink(spath);
    unlink(ipath);
    unlink(path);
    return 0;
}

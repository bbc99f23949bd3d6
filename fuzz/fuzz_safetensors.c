/* fuzz_safetensors.c: libFuzzer target for the safetensors reader.
 *
 * The input is written to a temporary file and opened as a checkpoint; when it opens, every
 * tensor's first and last elements are converted (so ASan sees any data pointer outside the
 * mapping) and one tensor is made writable and written. The same bytes are also tried as a
 * model.safetensors.index.json, which exercises shard-name checks and missing-shard paths.
 * Must never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"

static char g_dir[64];

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

static void remove_dir(void) { rmdir(g_dir); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_dir[0]) {
        strcpy(g_dir, "/tmp/mr_fuzz_st_XXXXXX");
        if (!mkdtemp(g_dir))
            abort();
        atexit(remove_dir); /* the files are unlinked after every input */
    }
    char path[128];
    snprintf(path, sizeof path, "%s/x.safetensors", g_dir);
    write_file(path, data, size);
    mr_st_set set;
    mr_err err = {0};
    if (mr_st_load_file(&set, path, &err) == 0) {
        touch_tensors(&set);
        mr_st_close(&set);
    } else if (err.code == 0 || !strstr(err.msg, g_dir)) {
        abort(); /* every failure fills the message and names the file */
    }
    /* the same bytes as an index next to x.safetensors */
    char ipath[128];
    snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", g_dir);
    write_file(ipath, data, size);
    if (mr_st_load_dir(&set, g_dir, &err) == 0) {
        touch_tensors(&set);
        mr_st_close(&set);
    }
    unlink(ipath);
    unlink(path);
    return 0;
}

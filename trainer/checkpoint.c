/* checkpoint.c: HF checkpoints and the resume state of `mrank train` (see checkpoint.h). The
 * state file is written to PATH.tmp and renamed, so a crash never leaves half a state. Not
 * here: PEFT adapters (tmodel.c), the data (data.c). */
#include "checkpoint.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"

int mr_copy_file(const char *src, const char *dst, mr_err *err) {
    FILE *a = fopen(src, "rb");
    if (!a) return mr_err_errno(err, "%s", src);
    FILE *b = fopen(dst, "wb");
    if (!b) {
        fclose(a);
        return mr_err_errno(err, "%s", dst);
    }
    char buf[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        if (fwrite(buf, 1, n, b) != n) {
            rc = mr_err_errno(err, "%s", dst);
            break;
        }
    fclose(a);
    if (fclose(b) && !rc) rc = mr_err_errno(err, "%s", dst);
    return rc;
}

int mr_tmodel_save_hf(const mr_tmodel *m, const char *dir, const char *tok_path, mr_err *err) {
    if (m->mode != MR_TRAIN_FULL)
        return mr_err_set(err, MR_ESTATE, "save checkpoint: the model is not in full mode");
    if (mkdir(dir, 0755) && errno != EEXIST) return mr_err_errno(err, "%s", dir);
    char path[1024];
    mr_config c = m->cfg;
    c.dtype = MR_DT_F32;
    c.tie_word_embeddings = 1;
    int rc;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((rc = mr_tmodel_save_trainable(m, path, 0, err))) return rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = mr_config_save(&c, path, err))) return rc;
    if (tok_path) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        rc = mr_copy_file(tok_path, path, err);
    }
    return rc;
}

#define STATE_MAGIC 0x5354524dU /* "MRTS" */

int mr_state_save(const char *path, const mr_tmodel *m, const mr_adamw *a, mr_err *err) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return mr_err_errno(err, "%s", tmp);
    uint32_t hdr[2] = {STATE_MAGIC, 1};
    int64_t step = a->step;
    uint64_t n = m->n_train;
    int ok = fwrite(hdr, sizeof hdr, 1, f) == 1 && fwrite(&step, sizeof step, 1, f) == 1 &&
             fwrite(&n, sizeof n, 1, f) == 1 &&
             fwrite(m->params + m->train_off, sizeof(float), n, f) == n &&
             fwrite(a->m, sizeof(float), n, f) == n && fwrite(a->v, sizeof(float), n, f) == n;
    if (fclose(f)) ok = 0;
    if (!ok) return mr_err_errno(err, "%s", tmp);
    if (rename(tmp, path)) return mr_err_errno(err, "%s", path);
    return 0;
}

int mr_state_load(const char *path, mr_tmodel *m, mr_adamw *a, mr_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return mr_err_errno(err, "%s", path);
    uint32_t hdr[2];
    int64_t step;
    uint64_t n;
    int rc = 0;
    if (fread(hdr, sizeof hdr, 1, f) != 1 || hdr[0] != STATE_MAGIC || hdr[1] != 1 ||
        fread(&step, sizeof step, 1, f) != 1 || fread(&n, sizeof n, 1, f) != 1) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a training state file", path);
    } else if (n != m->n_train || n != a->n) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: %llu trainable floats, the model has %zu", path,
                        (unsigned long long)n, m->n_train);
    } else if (fread(m->params + m->train_off, sizeof(float), n, f) != n ||
               fread(a->m, sizeof(float), n, f) != n || fread(a->v, sizeof(float), n, f) != n) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: truncated", path);
    } else {
        a->step = (int)step;
    }
    fclose(f);
    return rc;
}

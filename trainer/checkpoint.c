/* checkpoint.c: HF checkpoints and the resume state of `mrank train` (see checkpoint.h). The
 * state file is written to PATH.tmp, fsynced and renamed (the folder fsynced after), so a crash
 * never leaves half a state. Not here: PEFT adapters (tmodel.c), the data (data.c). */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    char path[PATH_MAX];
    mr_config c = m->cfg;
    c.dtype = MR_DT_F32;
    c.tie_word_embeddings = 1;
    int rc;
    if (strlen(dir) + sizeof "/model.safetensors" > sizeof path)
        return mr_err_set(err, MR_EINVAL, "%.64s...: path too long", dir);
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
#define STATE_META_MAX 65536

/* meta's fields as the state's text block records them, with the option that sets each (for
 * the refusal). */
typedef struct state_field {
    const char *key, *flag;
    char type; /* s string, i int, u unsigned long long, f float */
    size_t off;
} state_field;
#define SF(k, fl, t, mem) {k, fl, t, offsetof(mr_state_meta, mem)}
static const state_field FIELDS[] = {
    SF("stage", "--stage", 's', stage),
    SF("adapter", "the adapter (--ratios, --no-vertical)", 'i', adapter),
    SF("seed", "--seed", 'u', seed),
    SF("batch", "--batch", 'i', batch),
    SF("accum", "--accum", 'i', accum),
    SF("group", "--group", 'i', group),
    SF("steps", "--steps", 'i', steps),
    SF("warmup", "--warmup", 'i', warmup),
    SF("seq_len", "--seq-len", 'i', seq_len),
    SF("max_len", "--max-len", 'i', max_len),
    SF("query_max", "--query-max-len", 'i', query_max),
    SF("lr", "--lr", 'f', lr),
    SF("weight_decay", "--weight-decay", 'f', weight_decay),
    SF("clip", "--clip", 'f', clip),
    SF("lora_rank", "--lora-rank", 'i', lora_rank),
    SF("lora_alpha", "--lora-alpha", 'f', lora_alpha),
    SF("lora_dropout", "--lora-dropout", 'f', lora_dropout),
    SF("cascade", "--no-cascade", 'i', cascade),
    SF("cascade_step", "--cascade-step", 'i', cascade_step),
    SF("width_step", "--width-step", 'i', width_step),
    SF("full_only", "--full-only", 'i', full_only),
    SF("keep_heads", "--keep-heads", 'i', keep_heads),
    SF("pooling", "--pooling", 'i', pooling),
    SF("cascade_weight", "--cascade-weight", 'f', cascade_weight),
    SF("data_size", "--data (its size)", 'u', data_size),
    SF("data_hash", "--data (its contents)", 'u', data_hash),
    SF("n_params", "--init (the model's parameter count)", 'u', n_params),
};
#undef SF

static void field_value(const state_field *f, const mr_state_meta *m, char *out, size_t n) {
    const char *p = (const char *)m + f->off;
    switch (f->type) {
    case 's': {
        const char *v = *(const char *const *)p;
        snprintf(out, n, "%s", v ? v : "");
        break;
    }
    case 'i': snprintf(out, n, "%d", *(const int *)p); break;
    case 'u': snprintf(out, n, "%llu", *(const unsigned long long *)p); break;
    default: snprintf(out, n, "%.9g", (double)*(const float *)p); break;
    }
}

/* The text block: "key=value\n" per field. Returns its length (< cap), or -1 when it does
 * not fit. */
static int meta_text(const mr_state_meta *m, char *buf, size_t cap) {
    size_t at = 0;
    for (size_t i = 0; i < sizeof FIELDS / sizeof *FIELDS; i++) {
        char v[128];
        field_value(&FIELDS[i], m, v, sizeof v);
        int k = snprintf(buf + at, cap - at, "%s=%s\n", FIELDS[i].key, v);
        if (k < 0 || (size_t)k >= cap - at) return -1;
        at += (size_t)k;
    }
    return (int)at;
}

/* 0 when the state's text block (NUL-terminated) records meta's values; else MR_EINVAL naming
 * path and the first field that differs or is missing. */
static int meta_check(const char *path, const char *text, const mr_state_meta *m, mr_err *err) {
    for (size_t i = 0; i < sizeof FIELDS / sizeof *FIELDS; i++) {
        const state_field *f = &FIELDS[i];
        char want[128], got[128];
        field_value(f, m, want, sizeof want);
        size_t kl = strlen(f->key);
        const char *v = NULL;
        for (const char *l = text; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l))
            if (!strncmp(l, f->key, kl) && l[kl] == '=') {
                v = l + kl + 1;
                break;
            }
        if (!v)
            return mr_err_set(err, MR_EFORMAT,
                              "%s: field %s missing (a state of another mrank version): start "
                              "over (remove the file)", path, f->key);
        size_t vl = strcspn(v, "\n");
        snprintf(got, sizeof got, "%.*s", (int)(vl < sizeof got ? vl : sizeof got - 1), v);
        if (strcmp(got, want))
            return mr_err_set(err, MR_EINVAL,
                              "%s: field %s is %s in the state but %s in this run (%s): resume "
                              "with the run's own settings, or start over (remove the file)",
                              path, f->key, got, want, f->flag);
    }
    return 0;
}

/* fsync of the folder holding path, so that a rename into it survives a crash. */
static int sync_parent(const char *path, mr_err *err) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return mr_err_set(err, MR_EINVAL, "%.64s...: path too long", path);
    char *sl = strrchr(dir, '/');
    if (!sl) snprintf(dir, sizeof dir, ".");
    else if (sl == dir) dir[1] = 0;
    else *sl = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return mr_err_errno(err, "%s", dir);
    int rc = 0;
    if (fsync(fd) && errno != EINVAL) rc = mr_err_errno(err, "fsync %s", dir);
    close(fd);
    return rc;
}

int mr_state_save(const char *path, const mr_tmodel *m, const mr_adamw *a,
                  const mr_state_meta *meta, mr_err *err) {
    char tmp[PATH_MAX], text[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return mr_err_set(err, MR_EINVAL, "%.64s...: path too long", path);
    int tl = meta_text(meta, text, sizeof text);
    if (tl < 0) return mr_err_set(err, MR_EINVAL, "%s: run settings too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return mr_err_errno(err, "%s", tmp);
    uint32_t hdr[3] = {STATE_MAGIC, 2, (uint32_t)tl};
    int64_t step = a->step;
    uint64_t n = m->n_train;
    int ok = fwrite(hdr, sizeof hdr, 1, f) == 1 && fwrite(text, 1, (size_t)tl, f) == (size_t)tl &&
             fwrite(&step, sizeof step, 1, f) == 1 && fwrite(&n, sizeof n, 1, f) == 1 &&
             fwrite(m->params + m->train_off, sizeof(float), n, f) == n &&
             fwrite(a->m, sizeof(float), n, f) == n && fwrite(a->v, sizeof(float), n, f) == n &&
             fflush(f) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    if (fclose(f) && ok) ok = 0, e = errno;
    if (!ok) {
        unlink(tmp);
        errno = e;
        return mr_err_errno(err, "%s", tmp);
    }
    if (rename(tmp, path)) {
        e = errno;
        unlink(tmp);
        errno = e;
        return mr_err_errno(err, "%s", path);
    }
    return sync_parent(path, err);
}

int mr_state_load(const char *path, mr_tmodel *m, mr_adamw *a, const mr_state_meta *meta,
                  mr_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return mr_err_errno(err, "%s", path);
    uint32_t hdr[2], tl = 0;
    int64_t step;
    uint64_t n;
    int rc = 0;
    char *text = NULL;
    if (fread(hdr, sizeof hdr, 1, f) != 1 || hdr[0] != STATE_MAGIC) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a training state file", path);
        goto done;
    }
    if (hdr[1] == 1) {
        fprintf(stderr, "%s: a state of an older mrank, which does not record the run's "
                        "settings: resuming without checking them against this run's (remove "
                        "the file to start over)\n", path);
    } else if (hdr[1] == 2) {
        if (fread(&tl, sizeof tl, 1, f) != 1 || tl > STATE_META_MAX) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: not a training state file", path);
            goto done;
        }
        if (!(text = malloc((size_t)tl + 1))) {
            rc = mr_err_set(err, MR_ENOMEM, "out of memory");
            goto done;
        }
        if (fread(text, 1, tl, f) != tl) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: truncated", path);
            goto done;
        }
        text[tl] = 0;
        if (strlen(text) != tl) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: not a training state file", path);
            goto done;
        }
        if ((rc = meta_check(path, text, meta, err))) goto done;
    } else {
        rc = mr_err_set(err, MR_EUNSUPPORTED,
                        "%s: state format %u of another mrank version: start over (remove the "
                        "file)", path, hdr[1]);
        goto done;
    }
    if (fread(&step, sizeof step, 1, f) != 1 || fread(&n, sizeof n, 1, f) != 1) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: truncated", path);
    } else if (step < 0 || step > meta->steps) {
        rc = mr_err_set(err, MR_ERANGE, "%s: field step out of range (%lld, --steps %d)", path,
                        (long long)step, meta->steps);
    } else if (n != m->n_train || n != a->n) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: %llu trainable floats, the model has %zu", path,
                        (unsigned long long)n, m->n_train);
    } else if (fread(m->params + m->train_off, sizeof(float), n, f) != n ||
               fread(a->m, sizeof(float), n, f) != n || fread(a->v, sizeof(float), n, f) != n) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: truncated", path);
    } else {
        a->step = (int)step;
    }
done:
    free(text);
    fclose(f);
    return rc;
}

int mr_file_fingerprint(const char *path, unsigned long long *size, unsigned long long *hash,
                        mr_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return mr_err_errno(err, "%s", path);
    unsigned char buf[65536];
    uint64_t h = 0xcbf29ce484222325ull, total = 0;
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < k; i++) h = (h ^ buf[i]) * 0x100000001b3ull;
        total += k;
    }
    int rc = ferror(f) ? mr_err_errno(err, "%s", path) : 0;
    fclose(f);
    *size = total, *hash = h;
    return rc;
}

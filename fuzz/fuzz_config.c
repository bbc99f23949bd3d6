/* fuzz_config.c: libFuzzer target for config.json loading.
 *
 * The input is written to a temporary file and loaded; a config that loads must validate, save
 * and load again to the same sizes (the save/load round trip the trainer relies on). Must never
 * crash, leak or accept a config that validation would reject. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char g_dir[64], path[128], out[128];

static void cleanup(void) {
    unlink(path), unlink(out), rmdir(g_dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_dir[0]) {
        strcpy(g_dir, "/tmp/mr_fuzz_cfg_XXXXXX");
        if (!mkdtemp(g_dir))
            abort();
        snprintf(path, sizeof path, "%s/config.json", g_dir);
        snprintf(out, sizeof out, "%s/saved.json", g_dir);
        atexit(cleanup);
    }
    FILE *fp = fopen(path, "wb");
    if (!fp)
        abort();
    if (size && fwrite(data, 1, size, fp) != size)
        abort();
    fclose(fp);
    mr_config c, d;
    mr_err err = {0};
    if (mr_config_load(&c, path, &err) != 0) {
        if (err.code == 0 || !strstr(err.msg, path))
            abort(); /* failures fill the message and name the file */
        return 0;
    }
    if (mr_config_validate(&c, path, &err) != 0)
        abort();
    if (mr_config_save(&c, out, &err) == 0) {
        if (mr_config_load(&d, out, &err) != 0)
            abort();
        if (d.arch != c.arch || d.n_layers != c.n_layers || d.d_model != c.d_model ||
            d.n_heads != c.n_heads || d.n_kv_heads != c.n_kv_heads || d.head_dim != c.head_dim ||
            d.d_ff != c.d_ff || d.vocab_size != c.vocab_size || d.rope_theta != c.rope_theta ||
            d.rms_eps != c.rms_eps || d.sliding_window != c.sliding_window ||
            d.start_layer != c.start_layer || d.layer_sep != c.layer_sep || d.dtype != c.dtype)
            abort();
    }
    unlink(out);
    return 0;
}

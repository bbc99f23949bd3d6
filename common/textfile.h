/* textfile.h: a whole small file read into memory, NUL-terminated: the JSON files of a model
 * folder (config.json, tokenizer.json, adapter_config.json, model.safetensors.index.json).
 *
 * One bounded read for every engine parser, so each refuses a huge or non-regular file the
 * same way before allocating. Not for weights: safetensors data is mapped, never read
 * (safetensors.c). Cross-file internal (mr__): the engine's parsers are its only users. */
#ifndef MR_TEXTFILE_H
#define MR_TEXTFILE_H

#include <stddef.h>

#include "mr_err.h"

/* Reads the regular file path of at most limit bytes into *out (NUL-terminated, the caller
 * frees it) and its size without the NUL into *len (len may be NULL). Errors, with *out NULL:
 * the open errno (mr_err_errno), MR_EFORMAT when not a regular file or over limit, MR_ENOMEM,
 * MR_EIO on a read error. */
int mr__read_text(const char *path, size_t limit, char **out, size_t *len, mr_err *err);

#endif

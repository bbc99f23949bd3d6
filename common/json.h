/* json.h: one strict parse for every JSON document mrank reads whole (config.json, adapter and
 * index files, tokenizer.json, cluster configs, key files, calibration files, HTTP bodies).
 *
 * cJSON_Parse stops after the first value and at a NUL byte, so `{"a": 1} junk` or a file cut
 * by a NUL would be accepted as a prefix (and "a\u0000b" read as "a"); mr__json_parse takes the text's length and refuses
 * both, naming the line. Cross-file internal (mr__). */
#ifndef MR_JSON_H
#define MR_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "mr_err.h"

/* The JSON value that is all of text[0..len) but surrounding whitespace, or NULL with err set
 * (MR_EFORMAT): "NAME: line L: a NUL character" (a byte, or \u0000 in a string), "NAME: line L: not valid JSON", "NAME: line L:
 * text after the JSON value". The caller deletes the value (cJSON_Delete). */
cJSON *mr__json_parse(const char *text, size_t len, const char *name, mr_err *err);

#endif

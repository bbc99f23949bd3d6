/* calib.h: score calibration shared by the coordinator (calib.c applies calibration.json)
 * and `mrank calibrate` (cli/cmd_calibrate.c writes it): the key naming a sub-architecture in
 * the file, and the Platt fit (calib_fit.c). Pure functions, no I/O. The file format and the
 * reporting rule are documented in docs/cluster.md ("Scores"). */
#ifndef MR_CALIB_H
#define MR_CALIB_H

#include <stddef.h>

#include "coord_config.h"
#include "mr_err.h"
#include "subarch.h"

/* The key of a sub-architecture in calibration.json: "depth=8 ratio=1 compress= pooling=mean
 * adapters=" (compress layers and adapter names comma-separated, in the stage's order). */
void mr_calib_key(const mr_subarch *s, char *buf, size_t cap);
/* The key of stage `stage` of cfg: its sub-architecture with each adapter named by the last
 * path component of its folder in the pool ("vertical" for models/x/adapters/vertical), not by
 * the config's local name, so that a file fits every config that uses the same adapters. */
void mr_calib_stage_key(const mr_coord_config *cfg, int stage, char *buf, size_t cap);

/* Platt scaling of raw[0..n) against label (> 0 positive): *a > 0 and *b minimising the log
 * loss of sigmoid(a * raw + b) against Platt's smoothed targets; *loss_identity and *loss_fit:
 * that loss at a = 1, b = 0 and at the fit. MR_EINVAL (one label only, a non-finite score, a
 * slope <= 0), MR_ENOMEM. */
int mr_calib_fit(const float *raw, const int *label, int n, double *a, double *b,
                 double *loss_identity, double *loss_fit, mr_err *err);

#endif

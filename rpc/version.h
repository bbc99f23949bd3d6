/* version.h: the version of this build of mrank, one place for `mrank --version`, the
 * mrank_build_info metric and anything else that reports it.
 *
 * The values come from CMakeLists.txt (project VERSION and the git revision read at configure
 * time) as compile definitions of version.c only, so a version bump recompiles one file. */
#ifndef MR_VERSION_H
#define MR_VERSION_H

/* "0.7.0" */
const char *mr_version(void);
/* The short git revision the build was configured from, or "unknown". */
const char *mr_git_revision(void);

#endif

/* version.c: the build's version strings (see version.h); MR_VERSION and MR_GIT_REV are set
 * on this file alone by CMakeLists.txt. */
#include "version.h"

#ifndef MR_VERSION
#define MR_VERSION "0.0.0"
#endif
#ifndef MR_GIT_REV
#define MR_GIT_REV "unknown"
#endif

const char *mr_version(void) { return MR_VERSION; }

const char *mr_git_revision(void) { return MR_GIT_REV; }

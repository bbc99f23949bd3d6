/* coord_config.h: the cluster configuration of the cascade coordinator and of `mrank up`.
 *
 * One JSON file names the worker pools (a list of addresses, or one DNS target that gRPC
 * resolves with round_robin, e.g. a Kubernetes headless Service), the stages (a pool plus a
 * sub-architecture of the checkpoint), the cascade profiles (ordered stages with keep rules and
 * override bounds), the tiers (deadline budget, priority, default profile, degraded answers)
 * and the published request limits. mr_coord_config_load validates everything up front and
 * every error names the file and the JSON path ("deploy/local.json: profiles[1].stages[0].stage:
 * unknown stage 'deep'"). The format is documented in docs/cluster.md. The struct is plain data,
 * read-only after load; the coordinator and cli/cmd_up.c read it. */
#ifndef MR_COORD_CONFIG_H
#define MR_COORD_CONFIG_H

#include "cascade.h"
#include "fusion.h"
#include "subarch.h"
#include "mr_err.h"

#define MR_CC_NAME 64
#define MR_CC_MAX_POOLS 16
#define MR_CC_MAX_ADDRS 32
#define MR_CC_MAX_STAGES 16
#define MR_CC_MAX_PROFILES 16
#define MR_CC_MAX_TIERS 16
#define MR_CC_MAX_ADAPTERS 16

typedef struct mr_cc_adapter {
    char name[MR_CC_NAME];
    char dir[512];                         /* "" for pools run elsewhere */
} mr_cc_adapter;

typedef struct mr_cc_pool {
    char name[MR_CC_NAME];
    int n_addrs;
    char addrs[MR_CC_MAX_ADDRS][128];      /* host:port each; empty when dns is set */
    char dns[256];                         /* gRPC target, e.g. dns:///svc.ns:7000 */
    int n_adapters;
    mr_cc_adapter adapters[MR_CC_MAX_ADAPTERS];
    long max_call_tokens;                  /* split a stage into calls of at most this many tokens */
    int min_per_call;                      /* candidates per call before splitting across workers */
    int metrics_port_base;                 /* mrank up: worker i gets base + i (0: none) */
} mr_cc_pool;

#define MR_CC_PATH 512

/* A stage is neural (a sub-architecture scored by a pool's workers) or lexical ("kind":
 * "lexical": BM25 computed in the coordinator, common/bm25.h; no pool). */
typedef enum mr_cc_stage_kind { MR_CC_NEURAL = 0, MR_CC_LEXICAL = 1 } mr_cc_stage_kind;

typedef struct mr_cc_stage {
    char name[MR_CC_NAME];
    mr_cc_stage_kind kind;
    int pool;                              /* index into pools; -1 for a lexical stage */
    mr_subarch arch;                       /* depth > 0; adapters are names of the pool's */
    double k1, b;                          /* lexical: BM25 parameters */
    char lexicon[MR_CC_PATH];              /* lexical: statistics file ("": the candidates') */
    int stem;                              /* lexical: mr_bm25_stem, or -1 (unset: the
                                              lexicon's stemming, english without one) */
} mr_cc_stage;

typedef struct mr_cc_profile_stage {
    int stage;                             /* index into stages */
    mr_keep_rule keep;
    mr_keep_bounds bounds;
} mr_cc_profile_stage;

/* "fuse": whether consecutive stages that can share one forward pass (docs/cluster.md,
 * "Stages that continue") are sent as one Score call per group: the planner's cost comparison
 * (auto), never, or whenever they can (always: operators and tests). */
typedef enum mr_cc_fuse { MR_CC_FUSE_AUTO = 0, MR_CC_FUSE_NEVER, MR_CC_FUSE_ALWAYS } mr_cc_fuse;

typedef struct mr_cc_profile {
    char name[MR_CC_NAME];
    int n_stages;
    mr_cc_profile_stage stages[MR_CC_MAX_STAGES];
    mr_fusion fusion;                      /* final phase (method MR_FUSION_NONE: none) */
    mr_cc_fuse fuse;                       /* stages that continue (default auto) */
} mr_cc_profile;

typedef struct mr_cc_tier {
    char name[MR_CC_NAME];
    double budget_ms;                      /* 0 = only the gRPC deadline */
    int priority;                          /* higher is more important (admission) */
    int profile;                           /* index into profiles */
    int allow_degraded;
} mr_cc_tier;

/* The optional "security" section (docs/security.md). Paths as written in the file ("" when
 * absent); every named file was readable when the config was loaded. */
typedef struct mr_cc_security {
    char tls_cert[MR_CC_PATH], tls_key[MR_CC_PATH];   /* TLS on the public port */
    char tls_client_ca[MR_CC_PATH];                   /* then clients need a cert (mTLS) */
    char internal_ca[MR_CC_PATH];                     /* coordinator <-> workers: mTLS */
    char internal_cert[MR_CC_PATH], internal_key[MR_CC_PATH];
    char api_keys[MR_CC_PATH];                        /* mr_apikeys file */
} mr_cc_security;

typedef struct mr_coord_config {
    char path[512];
    char model[512];                       /* model folder (mrank up; "" if unset) */
    char listen[128];                      /* coordinator address (mrank up default) */
    int metrics_port;                      /* coordinator metrics (mrank up; 0 = none) */
    char http_listen[128];                 /* HTTP/JSON front end; "" or "off": none (mrank up
                                            * picks a free port on listen's host for "") */
    char otlp_endpoint[400];               /* OTLP/HTTP traces URL ("" = no span export);
                                            * mrank up gives it to the workers too */
    int max_documents, max_tokens_per_pair, max_request_bytes, max_inflight;
    double safety;                         /* run a stage when est * safety <= remaining */
    double call_overhead_ms;               /* cost model: fixed cost per Score round trip */
    int warmup_timeout_ms;                 /* deadline of each warm-up Score call (probe.c) */
    int n_pools, n_stages, n_profiles, n_tiers;
    int default_tier;
    mr_cc_pool pools[MR_CC_MAX_POOLS];
    mr_cc_stage stages[MR_CC_MAX_STAGES];
    mr_cc_profile profiles[MR_CC_MAX_PROFILES];
    mr_cc_tier tiers[MR_CC_MAX_TIERS];
    mr_cc_security security;
} mr_coord_config;

/* Loads and validates path; MR_EFORMAT/MR_EINVAL/MR_ERANGE with "path: json.path: problem" in
 * err, MR_EIO/MR_ENOTFOUND when unreadable. Caller-owned storage (large: heap-allocate it). */
int mr_coord_config_load(mr_coord_config *c, const char *path, mr_err *err);
/* Same from a JSON text; `name` stands for the file in messages. */
int mr_coord_config_parse(mr_coord_config *c, const char *name, const char *json, mr_err *err);

/* Index of the named profile/tier/stage/pool, -1 when absent. */
int mr_coord_config_profile(const mr_coord_config *c, const char *name);
int mr_coord_config_tier(const mr_coord_config *c, const char *name);
int mr_coord_config_stage(const mr_coord_config *c, const char *name);
int mr_coord_config_pool(const mr_coord_config *c, const char *name);

#endif

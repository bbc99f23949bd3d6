/* tcache_layout.h: the layout of mr_tcache (tcache.h), trainer-internal: shared by tcache.c,
 * which sizes the arenas for a pass and carves every pointer below out of them, and tpass.c,
 * which fills them in the forward and reads them in the backward. Nobody else includes it.
 *
 * Layout as in common/forward.c: the residual stream holds the rows packed back to back, row
 * r = [query nq | passage np | suffix ns]. Per layer l: the token layout entering it, the
 * residual before compression (res) and after (in), and every intermediate of the layer. */
#ifndef MR_TCACHE_LAYOUT_H
#define MR_TCACHE_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "tcache.h"
#include "tmodel.h"
#include "twidth.h"

typedef struct mr__lcache {
    int n;                       /* tokens at this layer's input */
    int compressed;              /* input pooled from res (layout of the previous layer) */
    int32_t *off, *len, *nq, *np, *ns, *pos; /* (n_rows) x5, (n) */
    float *res;                  /* (n_prev, d) residual entering, before compression */
    float *pw;                   /* (n_prev) attention pooling weights (last_probs of layer
                                    l-1), or NULL: mean pooling / not compressed */
    float *in;                   /* (n, d) layer input (== res when not compressed) */
    float *xn1, *ao, *h, *xn2, *fo; /* (n, d) */
    float *q, *att;              /* (n, nh*hd) */
    float *k, *v;                /* (n, nkv*hd) */
    float *gate, *up, *act;      /* (n, dff) */
    float *lt[MR_N_LIN];         /* (n, rank) x A^T, LoRA mode */
} mr__lcache;

struct mr_tcache {
    int n_rows, n_layers;        /* rows and layers of the cached pass */
    int ratio;                   /* compression ratio of the cached pass */
    int freeze_pw;               /* tests: keep the cached attention pooling weights */
    mr__lcache *L;               /* (n_layers) */
    int32_t *off0, *len0, *nq0, *np0, *ns0; /* (n_rows) layout of the embeddings */
    int32_t *ids;                /* (n_0) */
    float *out;                  /* (n_last, d) residual after the last layer */
    float *scores;               /* (n_exits, n_rows) */
    float *heads_eff;            /* (n_exits, d) head + LoRA delta */
    float drop_p;                /* LoRA dropout of the cached pass (0: none) */
    uint64_t drop_key;           /* its pass key */
    float *xdrop, *dxdrop;       /* (n_max, max in) dropped LoRA input and its gradient */
    float *hdelta, *dhdelta;     /* (n_exits, d) scale B A of the heads and its gradient */
    float *hrow;                 /* (2 d) one row's dropped head and its gradient */
    /* backward scratch */
    float *dres, *din, *dn, *dq, *dk, *dv, *datt, *dgate, *dup, *dact, *dt;
    float *dheads;               /* (n_exits, d) */
    float *attn_scratch, *attn_bscratch;
    float *fbuf;
    size_t fcap;
    int32_t *ibuf;
    size_t icap;
    size_t lcap;
};

/* Sizes c for a pass of rows (n_rows) at width w through layers [0, D) of m (tokens per layer
 * under w, then one float and one int arena carved in order) and records n_rows, D and the
 * ratio. MR_ENOMEM, or MR_ERANGE for more layers than the cache supports; c then holds no
 * pass. */
int mr__tcache_prepare(const mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                       const mr_twidth *w, int D, mr_err *err);

#endif

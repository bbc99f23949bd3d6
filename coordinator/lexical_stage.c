/* lexical_stage.c: the cascade's lexical stage ("kind": "lexical", see coord_internal.h): the
 * stages' lexicon files, loaded once when the coordinator is made, and the BM25 scoring of a
 * request's active candidates in the executor thread (common/bm25.h; microseconds per
 * candidate, so no pool, no fan-out and no cost model). */
#include <stdio.h>
#include <stdlib.h>

#include "bm25.h"
#include "coord_internal.h"

int mr__lexical_load(mr_coord *c, mr_err *err) {
    for (int s = 0; s < c->cfg.n_stages; s++) {
        mr_cc_stage *st = &c->cfg.stages[s];
        if (st->kind != MR_CC_LEXICAL) continue;
        if (!*st->lexicon) {
            if (st->stem < 0) st->stem = MR_BM25_STEM_ENGLISH;
            continue;
        }
        if (!(c->lex[s] = calloc(1, sizeof *c->lex[s])))
            return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
        mr_err e = {0};
        int rc = mr_lexicon_load(c->lex[s], st->lexicon, &e);
        if (rc)
            return mr_err_set(err, rc, "%s: stages[%d] '%s': lexicon: %s", c->cfg.path, s,
                              st->name, e.msg);
        if (st->stem >= 0 && st->stem != (int)c->lex[s]->stem)
            return mr_err_set(err, MR_EINVAL, "%s: stages[%d] '%s': stem '%s', but the terms of "
                              "lexicon %s are stemmed '%s'", c->cfg.path, s, st->name,
                              mr_bm25_stem_name((mr_bm25_stem)st->stem), st->lexicon,
                              mr_bm25_stem_name(c->lex[s]->stem));
        st->stem = (int)c->lex[s]->stem; /* unset: the lexicon's */
    }
    return 0;
}

void mr__lexical_free(mr_coord *c) {
    for (int s = 0; s < MR_CC_MAX_STAGES; s++) {
        mr_lexicon_free(c->lex[s]);
        free(c->lex[s]);
        c->lex[s] = NULL;
    }
}

int mr__first_neural(const mr__req *r) {
    const mr_cc_profile *pr = &r->co->cfg.profiles[r->profile];
    int pos = 0;
    while (pos < pr->n_stages && mr__req_stage(r, pos)->kind == MR_CC_LEXICAL) pos++;
    return pos;
}

int mr__lexical_stage(mr__req *r, int pos, const int *active, int n_active,
                      grpc_status_code *code, char *msg, size_t cap) {
    mr_coord *c = r->co;
    int si = c->cfg.profiles[r->profile].stages[pos].stage;
    const mr_cc_stage *st = &c->cfg.stages[si];
    const char **docs = calloc((size_t)(n_active > 0 ? n_active : 1), sizeof *docs);
    float *sc = malloc((size_t)(n_active > 0 ? n_active : 1) * sizeof *sc);
    mr_err err = {0};
    mr_bm25_params p = {st->k1, st->b, (mr_bm25_stem)st->stem}; /* set by mr__lexical_load */
    int rc = -1;
    if (docs && sc) {
        for (int i = 0; i < n_active; i++) docs[i] = r->in->documents[active[i]]->text;
        rc = mr_bm25_score(c->lex[si], &p, r->in->query, docs, n_active, sc, &err);
    }
    if (!rc) {
        for (int i = 0; i < n_active; i++) {
            r->score[active[i]] = sc[i];
            r->stage[active[i]] = pos;
        }
    } else {
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, cap, "coordinator: out of memory");
    }
    free(docs);
    free(sc);
    return rc ? -1 : 0;
}

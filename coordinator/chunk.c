/* chunk.c: long documents in overlapping windows (RerankRequest.chunking; docs/cluster.md
 * "Chunking"; see coord_internal.h).
 *
 * Splitting. The coordinator has no tokenizer, so windows are cut on words: a word is a
 * maximal run of bytes other than ASCII whitespace, and it counts mr__est_tokens(its bytes + 1)
 * estimated tokens, the estimate request.c plans every passage with. A chunk is the longest
 * run of whole words from its start whose estimate stays within `window` (at least one word;
 * a chunk longer than max_bytes is cut there, on a UTF-8 boundary); the next chunk starts at
 * the first word `stride` or more estimated tokens after the start (at the latest, the first
 * word the chunk left out). At most max_chunks per document: the words after the last are not
 * scored (the document reports truncated). The worker still cuts a chunk whose real tokens do
 * not fit the pair budget (truncated too). A document that fits in one window is its own
 * single chunk: scored from its own text, with no copy and no extra row.
 *
 * Rows. The request's per-candidate arrays (stage, score, depth, passage_tokens, truncated) hold
 * the n documents, then the chunks of every document split in several (or cut). The first
 * neural stage scores every chunk of its active documents; a document takes its best chunk's
 * score (NaN lowest, ties to the earlier chunk) into its own row, which the keep rule, fusion and
 * the ranking read exactly as without chunking; later stages score that chunk's row only and copy
 * its result to the document's row, so what the first neural stage leaves to them is planned
 * for its documents, not its chunk rows (mr__chunk_docs). A lexical stage scores documents
 * whole (rerank.c calls it, not this file). Before the first neural stage, a split document's row carries the estimate of
 * all its chunks (each with its own query segment and suffix), so admission and planning count
 * the work the chunks cost; after it, its best chunk's exact count. The total of chunks is
 * bounded by limits.max_documents, so a request never scores more rows than it may send
 * documents. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"

/* A chunk's bytes are cut at this many per token of the pair budget (no tokenizer's token is
 * that long, so the cut never removes what the worker would have scored). */
#define MAX_BYTES_PER_TOKEN 64

struct mr__chunks {
    int window, stride, max;
    int n;                      /* documents */
    int *first;                 /* (n) row of its chunk 0: the document's own row when unsplit */
    int *count;                 /* (n) its chunks */
    int *cut;                   /* (n) words after its last chunk left out */
    int *best;                  /* (n) row of its best chunk, -1 before the first neural stage */
    mr__span *span;             /* (n * max) chunk c of document d at d * max + c */
    int *rows;                  /* (every row) the rows of the stage running */
    int *owner;                 /* (chunk rows) the document of row r->n + i */
    char **text;                /* (chunk rows) NUL-terminated copies, in arena */
    char *arena;
};

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* The first word at or after p in t[0..len): its start (len when none), its end into *end. */
static size_t next_word(const char *t, size_t len, size_t p, size_t *end) {
    while (p < len && is_space((unsigned char)t[p])) p++;
    size_t e = p;
    while (e < len && !is_space((unsigned char)t[e])) e++;
    *end = e;
    return p;
}

int mr__chunk_split(const char *text, size_t len, int window, int stride, int max_chunks,
                    size_t max_bytes, mr__span *out, int *cut) {
    size_t we, s = next_word(text, len, 0, &we);
    int n = 0;
    *cut = 0;
    while (s < len) {
        if (n == max_chunks) {
            *cut = 1;
            break;
        }
        double tok = 0;
        size_t end = s, next = len, p = s;
        int last = 0;   /* the chunk reaches the last word */
        for (;;) {
            size_t e, w = next_word(text, len, p, &e);
            if (w >= len) {
                last = 1;
                break;
            }
            double t = mr__est_tokens(e - w + 1);
            if (w > s && tok + t > window) {
                if (next == len) next = w;
                break;
            }
            if (w > s && next == len && tok >= stride) next = w;
            tok += t;
            end = p = e;
        }
        if (n == 0 && last) break;   /* it fits one window: the whole text, below */
        if (end - s > max_bytes) {
            end = s + max_bytes;
            while (end > s && ((unsigned char)text[end] & 0xC0) == 0x80) end--;
            /* the next chunk starts at the first word that starts at or after the cut (a word
             * cut in two loses its tail), never later: the words between the cut and the
             * window's stride point would otherwise be skipped */
            size_t q = end, qe;
            while (q < len && q > 0 && !is_space((unsigned char)text[q - 1]) &&
                   !is_space((unsigned char)text[q]))
                q++;
            size_t w = next_word(text, len, q, &qe);
            if (w < len && w > s && (last || w < next)) next = w, last = 0;
        }
        out[n++] = (mr__span){(uint32_t)s, (uint32_t)(end - s)};
        if (last) break;
        s = next;
    }
    if (n == 0) out[n++] = (mr__span){0, (uint32_t)len};
    return n;
}

int mr__chunk_check(const mr__req *r, mr_err *err) {
    const Mrank__V1__Chunking *ch = r->in->chunking;
    if (!ch || (!ch->window && !ch->stride && !ch->max_chunks)) return 0;
    if (!ch->window)
        return mr_err_set(err, MR_EINVAL, "chunking.window: 0, with stride or max_chunks set: "
                          "a window of at least 1 passage token turns chunking on (all 0: off)");
    int room = mr__req_passage_room(r, mr__req_fixed_tokens(r));
    if (ch->window > (uint32_t)room)
        return mr_err_set(err, MR_ERANGE, "chunking.window: %u passage tokens do not fit the "
                          "pair budget: max_tokens_per_pair %d leaves about %d after this query "
                          "(Info.max_tokens_per_pair)", ch->window,
                          r->co->cfg.max_tokens_per_pair, room);
    if (ch->stride > ch->window)
        return mr_err_set(err, MR_ERANGE, "chunking.stride: %u is above the window %u "
                          "(1..window; 0 = window)", ch->stride, ch->window);
    if (ch->max_chunks > MR_CHUNK_MAX_CHUNKS)
        return mr_err_set(err, MR_ERANGE, "chunking.max_chunks: %u is above the bound %d",
                          ch->max_chunks, MR_CHUNK_MAX_CHUNKS);
    return 0;
}

int mr__chunk_start(mr__req *r, int *rows, mr_err *err) {
    const Mrank__V1__Chunking *ch = r->in->chunking;
    if (!ch || !ch->window) return 0;
    mr__chunks *k = calloc(1, sizeof *k);
    if (!(r->chunks = k)) return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    k->window = (int)ch->window;
    k->stride = ch->stride ? (int)ch->stride : k->window;
    k->max = ch->max_chunks ? (int)ch->max_chunks : MR_CHUNK_MAX_CHUNKS;
    k->n = r->n;
    k->first = malloc((size_t)r->n * sizeof *k->first);
    k->count = malloc((size_t)r->n * sizeof *k->count);
    k->cut = malloc((size_t)r->n * sizeof *k->cut);
    k->best = malloc((size_t)r->n * sizeof *k->best);
    k->span = malloc((size_t)r->n * (size_t)k->max * sizeof *k->span);
    if (!k->first || !k->count || !k->cut || !k->best || !k->span)
        return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    size_t max_bytes = (size_t)r->co->cfg.max_tokens_per_pair * MAX_BYTES_PER_TOKEN;
    long total = 0, extra = 0;
    size_t bytes = 0;
    for (int d = 0; d < r->n; d++) {
        const char *t = r->in->documents[d]->text;
        mr__span *sp = k->span + (size_t)d * k->max;
        k->count[d] = mr__chunk_split(t, strlen(t), k->window, k->stride, k->max, max_bytes, sp,
                                      &k->cut[d]);
        k->best[d] = -1;
        total += k->count[d];
        if (k->count[d] == 1 && !k->cut[d]) {
            k->first[d] = d;   /* unsplit: its own row */
            continue;
        }
        k->first[d] = r->n + (int)extra;
        extra += k->count[d];
        for (int c = 0; c < k->count[d]; c++) bytes += sp[c].len + 1;
    }
    if (total > r->co->cfg.max_documents)
        return mr_err_set(err, MR_ERANGE, "chunking: the %d documents split into %ld chunks, "
                          "the limit is %d (Info.max_documents): raise chunking.stride or "
                          "lower chunking.max_chunks", r->n, total, r->co->cfg.max_documents);
    *rows = r->n + (int)extra;
    k->rows = malloc((size_t)*rows * sizeof *k->rows);
    k->text = malloc((size_t)(extra ? extra : 1) * sizeof *k->text);
    k->owner = malloc((size_t)(extra ? extra : 1) * sizeof *k->owner);
    k->arena = malloc(bytes ? bytes : 1);
    if (!k->rows || !k->text || !k->owner || !k->arena)
        return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    char *a = k->arena;
    for (int d = 0; d < r->n; d++) {
        if (k->first[d] == d) continue;
        const mr__span *sp = k->span + (size_t)d * k->max;
        for (int c = 0; c < k->count[d]; c++) {
            memcpy(a, r->in->documents[d]->text + sp[c].start, sp[c].len);
            a[sp[c].len] = 0;
            k->text[k->first[d] - r->n + c] = a;
            k->owner[k->first[d] - r->n + c] = d;
            a += sp[c].len + 1;
        }
    }
    return 0;
}

void mr__chunk_rows(mr__req *r) {
    const mr__chunks *k = r->chunks;
    for (int d = 0; k && d < r->n; d++) {
        if (k->first[d] == d) continue;
        long pt = (long)(k->count[d] - 1) * r->n_fixed;
        for (int c = 0; c < k->count[d]; c++) pt += r->passage_tokens[k->first[d] + c];
        r->passage_tokens[d] = (int)pt;
        r->truncated[d] = k->cut[d];
    }
}

const char *mr__chunk_text(const mr__req *r, int row) { return r->chunks->text[row - r->n]; }

void mr__chunk_free(mr__req *r) {
    mr__chunks *k = r->chunks;
    if (!k) return;
    free(k->first);
    free(k->count);
    free(k->cut);
    free(k->best);
    free(k->span);
    free(k->rows);
    free(k->text);
    free(k->owner);
    free(k->arena);
    free(k);
    r->chunks = NULL;
}

/* The row of document d's best chunk after the first neural stage scored them all. */
static int best_row(const mr__req *r, const mr__chunks *k, int d) {
    int b = k->first[d];
    for (int c = 1; c < k->count[d]; c++) {
        int x = k->first[d] + c;
        if (isnan(r->score[b]) ? !isnan(r->score[x]) : r->score[x] > r->score[b]) b = x;
    }
    return b;
}

int mr__chunk_stage(mr__req *r, int pos, const int *active, int n_active,
                    grpc_status_code *code, char *msg, size_t cap) {
    mr__chunks *k = r->chunks;
    r->stage_rows[pos] = n_active;
    if (!k) return mr__fanout_stage(r, pos, active, n_active, code, msg, cap);
    int first = pos == mr__first_neural(r), m = 0;
    for (int i = 0; i < n_active; i++) {
        int d = active[i];
        if (!first) k->rows[m++] = k->best[d];
        else
            for (int c = 0; c < k->count[d]; c++) k->rows[m++] = k->first[d] + c;
    }
    r->stage_rows[pos] = m;
    int rc = mr__fanout_stage(r, pos, k->rows, m, code, msg, cap);
    if (rc) return rc;
    for (int i = 0; i < n_active; i++) {
        int d = active[i], b = first ? best_row(r, k, d) : k->best[d];
        k->best[d] = b;
        if (b == d) continue;
        r->stage[d] = r->stage[b];
        r->score[d] = r->score[b];
        r->depth[d] = r->depth[b];
        r->truncated[d] |= r->truncated[b];
        r->passage_tokens[d] = r->passage_tokens[b];   /* later stages score this chunk */
    }
    return 0;
}

int mr__chunk_docs(const mr__req *r, int pos, const int *rows, int n_rows) {
    const mr__chunks *k = r->chunks;
    if (!k || pos != mr__first_neural(r)) return n_rows;
    int docs = 0, last = -1;
    for (int i = 0; i < n_rows; i++) {     /* a document's chunk rows are consecutive */
        int d = rows[i] < r->n ? rows[i] : k->owner[rows[i] - r->n];
        docs += d != last;
        last = d;
    }
    return docs;
}

int mr__chunk_result(const mr__req *r, int d, uint32_t *index, uint32_t *offset,
                     uint32_t *length) {
    const mr__chunks *k = r->chunks;
    if (!k || k->best[d] < 0) return 0;
    int c = k->first[d] == d ? 0 : k->best[d] - k->first[d];
    const mr__span *sp = &k->span[(size_t)d * k->max + c];
    *index = (uint32_t)c;
    *offset = sp->start;
    *length = sp->len;
    return 1;
}

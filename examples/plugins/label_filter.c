/* The label filter of label_filter.rs, in C, against ABI v1 without any
 * library: keep only nodes that have the label named by the `label`
 * setting. Built by build.sh with clang --target=wasm32 into
 * label_filter_c.wasm. See docs/plugins.md for the encoding. */

typedef unsigned int u32;
typedef unsigned char u8;

__attribute__((import_module("shepherd"), import_name("log"))) void shepherd_log(const u8 *ptr, u32 len);

#define INPUT_MAX (8 << 20)
#define OUTPUT_MAX (1 << 20)
static u8 input[INPUT_MAX];
static u8 output[OUTPUT_MAX];
static u8 label[256];
static u32 label_len;

static u32 get_u32(const u8 *p) { return p[0] | (p[1] << 8) | (p[2] << 16) | ((u32)p[3] << 24); }
static void put_u32(u8 *p, u32 v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }

/* A reader over the request that fails (ok = 0) instead of reading past its end. */
struct reader { const u8 *p; const u8 *end; int ok; };
static u32 r_u32(struct reader *r) {
    if (!r->ok || r->end - r->p < 4) { r->ok = 0; return 0; }
    u32 v = get_u32(r->p); r->p += 4; return v;
}
static const u8 *r_str(struct reader *r, u32 *len) {
    *len = r_u32(r);
    if (!r->ok || (u32)(r->end - r->p) < *len) { r->ok = 0; *len = 0; return 0; }
    const u8 *s = r->p; r->p += *len; return s;
}
static int same(const u8 *a, u32 alen, const u8 *b, u32 blen) {
    if (alen != blen) return 0;
    for (u32 i = 0; i < alen; i++) if (a[i] != b[i]) return 0;
    return 1;
}

__attribute__((export_name("shepherd_abi_v1"))) void abi_v1(void) {}

__attribute__((export_name("shepherd_alloc"))) u8 *alloc(u32 len) { return len <= INPUT_MAX ? input : 0; }

__attribute__((export_name("shepherd_init"))) int init(u8 *ptr, u32 len) {
    struct reader r = { ptr, ptr + len, 1 };
    u32 n = r_u32(&r);
    for (u32 i = 0; i < n && r.ok; i++) {
        u32 klen, vlen;
        const u8 *k = r_str(&r, &klen), *v = r_str(&r, &vlen);
        if (r.ok && same(k, klen, (const u8 *)"label", 5) && vlen < sizeof label) {
            for (u32 j = 0; j < vlen; j++) label[j] = v[j];
            label_len = vlen;
        }
    }
    if (!label_len) {
        static const char msg[] = "label_filter (C) needs `label` in its settings";
        shepherd_log((const u8 *)msg, sizeof msg - 1);
        return 1;
    }
    return 0;
}

/* The request (docs/plugins.md): fixed-size records, strings as
 * (offset, length) references from the request's start. */
#define NODE_RECORD 56
#define LABEL_RECORD 16

static int ref_equals(const u8 *req, u32 len, u32 at, const u8 *s, u32 slen) {
    if (at + 8 > len) return 0;
    u32 off = get_u32(req + at), n = get_u32(req + at + 4);
    return off <= len && n <= len - off && same(req + off, n, s, slen);
}

__attribute__((export_name("shepherd_filter"))) unsigned long long filter(u8 *req, u32 len) {
    if (len < 20) return 0;
    u32 n = get_u32(req + 8), nodes_at = get_u32(req + 16);
    if ((unsigned long long)nodes_at + (unsigned long long)n * NODE_RECORD > len) return 0;
    if (4 + 4 * (unsigned long long)n + 4 + 4 + 3 + label_len + 5 > OUTPUT_MAX) return 0;
    put_u32(output, n);
    int any_rejected = 0;
    for (u32 i = 0; i < n; i++) {
        const u8 *node = req + nodes_at + i * NODE_RECORD;
        u32 labels_at = get_u32(node + 48), labels = get_u32(node + 52), found = 0;
        for (u32 j = 0; j < labels && !found; j++)
            found = ref_equals(req, len, labels_at + j * LABEL_RECORD, label, label_len);
        put_u32(output + 4 + 4 * i, found ? 0 : 1);         /* 0: keep; 1: the first reason */
        if (!found) any_rejected = 1;
    }
    u8 *p = output + 4 + 4 * n;
    /* One reason: "no LABEL left". */
    put_u32(p, any_rejected ? 1 : 0); p += 4;
    if (any_rejected) {
        put_u32(p, 3 + label_len + 5); p += 4;
        p[0] = 'n'; p[1] = 'o'; p[2] = ' '; p += 3;
        for (u32 j = 0; j < label_len; j++) *p++ = label[j];
        const char *tail = " left";
        for (int j = 0; j < 5; j++) *p++ = tail[j];
    }
    return ((unsigned long long)(unsigned long)output << 32) | (u32)(p - output);
}

/*
 * proxy_wasm.h: a small, dependency-free C binding for the proxy-wasm ABI 0.2.1, as
 * implemented by gpt-oss-lb's plugin host (wasmtime).
 *
 * A filter is one C file that includes this header and is compiled to wasm32 with no libc:
 *
 *   clang --target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding -fno-builtin \
 *         -Iproxy/plugins/include -Wl,--no-entry -o filter.wasm filter.c
 *
 * (scripts/build-plugins does exactly that for every .c file in proxy/plugins/examples.)
 *
 * What is here:
 *   - the host functions the module imports (module "env"), with their ABI 0.2.1 signatures;
 *   - the ABI's enums (status codes, log levels, actions, buffer, map and metric types);
 *   - EXPORT(name), which exports a C function under the callback name the host looks for;
 *   - memcpy / memset / memcmp, because clang lowers struct copies and zeroing to calls to
 *     them even with -fno-builtin, and there is no libc to provide them;
 *   - the allocator: proxy_on_memory_allocate (exported: the host calls it to place every
 *     buffer it hands to the module) and pw_free;
 *   - small helpers: string length and comparison, decimal formatting, logging, the header
 *     map serialization that proxy_send_local_response takes, and a per-context table.
 *
 * Everything is defined in this header (there is no library to link), so include it from
 * exactly one translation unit: one filter is one .c file.
 *
 * Memory ownership. Buffers the host returns (proxy_get_buffer_bytes,
 * proxy_get_header_map_value, proxy_get_property, ...) are allocated by the host calling the
 * module's proxy_on_memory_allocate; the filter owns them and must pw_free each one when done,
 * normally before the callback returns. Always initialise the returned pointer to 0 and free it
 * whatever the status: pw_free(0) does nothing.
 *
 * The allocator is a bump arena above the module's static data (from __heap_base), grown with
 * memory.grow. It counts live allocations; pw_free decrements the count, and when it reaches 0
 * the whole arena is reset to its start. A filter that frees everything it (or the host)
 * allocated before each callback returns therefore never grows its memory beyond what one
 * callback needs, however many requests it serves. Corollary: never keep an arena pointer
 * across callbacks (copy what must survive, e.g. the plugin configuration, into static
 * storage), or the live count never drops to 0 and the arena grows for ever.
 *
 * One module instance serves many HTTP contexts, interleaved (the host calls one callback at a
 * time, but request A's body may come between request B's headers and body). Per-request state
 * therefore lives in a table keyed by context id (pw_ctx_* below), reset in proxy_on_delete.
 */
#ifndef PROXY_WASM_H
#define PROXY_WASM_H

#include <stddef.h> /* size_t (32-bit on wasm32); clang's freestanding header */
#include <stdint.h> /* uint32_t, int64_t, ...; clang's freestanding header */

/* ------------------------------------------------------------------------------------------
 * Enums of the ABI.
 * ---------------------------------------------------------------------------------------- */

/* Status returned by every host function. */
enum pw_status {
  PW_OK = 0,
  PW_NOT_FOUND = 1,
  PW_BAD_ARGUMENT = 2,
  PW_SERIALIZATION_FAILURE = 3,
  PW_PARSE_FAILURE = 4,
  PW_BAD_EXPRESSION = 5,
  PW_INVALID_MEMORY_ACCESS = 6,
  PW_EMPTY = 7,
  PW_CAS_MISMATCH = 8,
  PW_RESULT_MISMATCH = 9,
  PW_INTERNAL_FAILURE = 10,
  PW_BROKEN_CONNECTION = 11,
  PW_UNIMPLEMENTED = 12,
};

/* Log levels of proxy_log. */
enum pw_log_level {
  PW_LOG_TRACE = 0,
  PW_LOG_DEBUG = 1,
  PW_LOG_INFO = 2,
  PW_LOG_WARN = 3,
  PW_LOG_ERROR = 4,
  PW_LOG_CRITICAL = 5,
};

/* What an HTTP callback returns. PAUSE on request headers after proxy_send_local_response
 * ends the request there; PAUSE on a body callback with end_of_stream == 0 asks the host to
 * buffer the body and call again with everything so far; PAUSE on response headers asks the
 * host to hold the response header back until a later callback returns CONTINUE. */
enum pw_action {
  PW_CONTINUE = 0,
  PW_PAUSE = 1,
};

/* Buffers for proxy_get_buffer_bytes / proxy_set_buffer_bytes / proxy_get_buffer_status. */
enum pw_buffer_type {
  PW_BUFFER_HTTP_REQUEST_BODY = 0,
  PW_BUFFER_HTTP_RESPONSE_BODY = 1,
  PW_BUFFER_DOWNSTREAM_DATA = 2,
  PW_BUFFER_UPSTREAM_DATA = 3,
  PW_BUFFER_HTTP_CALL_RESPONSE_BODY = 4,
  PW_BUFFER_GRPC_RECEIVE_BUFFER = 5,
  PW_BUFFER_VM_CONFIGURATION = 6,
  PW_BUFFER_PLUGIN_CONFIGURATION = 7,
};

/* Header maps. Header names are lower-cased by the host. */
enum pw_map_type {
  PW_MAP_HTTP_REQUEST_HEADERS = 0,
  PW_MAP_HTTP_REQUEST_TRAILERS = 1,
  PW_MAP_HTTP_RESPONSE_HEADERS = 2,
  PW_MAP_HTTP_RESPONSE_TRAILERS = 3,
};

/* Metric types of proxy_define_metric. */
enum pw_metric_type {
  PW_METRIC_COUNTER = 0,
  PW_METRIC_GAUGE = 1,
  PW_METRIC_HISTOGRAM = 2,
};

/* ------------------------------------------------------------------------------------------
 * Host functions (imports from module "env"). All return a pw_status; pointers and sizes are
 * 32-bit. Out-parameters ret_ptr / ret_len receive a buffer the host allocated with
 * proxy_on_memory_allocate: pw_free it.
 * ---------------------------------------------------------------------------------------- */

#define PW_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

/* Logs msg[0..msg_len) at the given pw_log_level. */
PW_IMPORT(proxy_log)
uint32_t proxy_log(uint32_t level, const char *msg, size_t msg_len);

/* Copies bytes [start, start + max_size) of a buffer (clamped to its end) into a new
 * allocation. */
PW_IMPORT(proxy_get_buffer_bytes)
uint32_t proxy_get_buffer_bytes(uint32_t buffer_type, uint32_t start, uint32_t max_size,
                                char **ret_ptr, size_t *ret_len);

/* Replaces bytes [start, start + size) of a buffer with data[0..len). start = 0 and size = the
 * buffer's length replaces the whole buffer. */
PW_IMPORT(proxy_set_buffer_bytes)
uint32_t proxy_set_buffer_bytes(uint32_t buffer_type, uint32_t start, uint32_t size,
                                const char *data, size_t len);

/* The buffer's current length and flags. */
PW_IMPORT(proxy_get_buffer_status)
uint32_t proxy_get_buffer_status(uint32_t buffer_type, size_t *ret_len, uint32_t *ret_flags);

/* The value of header key in a map; PW_NOT_FOUND when absent. */
PW_IMPORT(proxy_get_header_map_value)
uint32_t proxy_get_header_map_value(uint32_t map_type, const char *key, size_t key_len,
                                    char **ret_value, size_t *ret_len);

/* Appends a header (another value when the name is already there). */
PW_IMPORT(proxy_add_header_map_value)
uint32_t proxy_add_header_map_value(uint32_t map_type, const char *key, size_t key_len,
                                    const char *value, size_t value_len);

/* Sets a header, replacing any values it had. */
PW_IMPORT(proxy_replace_header_map_value)
uint32_t proxy_replace_header_map_value(uint32_t map_type, const char *key, size_t key_len,
                                        const char *value, size_t value_len);

/* Removes every value of a header. */
PW_IMPORT(proxy_remove_header_map_value)
uint32_t proxy_remove_header_map_value(uint32_t map_type, const char *key, size_t key_len);

/* Answers the request from the plugin: status_code, details (for logs), body, and headers in
 * the proxy-wasm map serialization (see pw_headers_* below). grpc_status: pass -1. */
PW_IMPORT(proxy_send_local_response)
uint32_t proxy_send_local_response(uint32_t status_code, const char *details,
                                   size_t details_len, const char *body, size_t body_len,
                                   const char *headers, size_t headers_len,
                                   int32_t grpc_status);

/* The value of a property. The path is its segments joined by NUL bytes, e.g.
 * "gpt_oss\0usage\0total_tokens" (the length excludes any trailing NUL; see PW_PATH). */
PW_IMPORT(proxy_get_property)
uint32_t proxy_get_property(const char *path, size_t path_len, char **ret_value,
                            size_t *ret_len);

/* Defines (or finds) a metric by name; *ret_id identifies it in the calls below. */
PW_IMPORT(proxy_define_metric)
uint32_t proxy_define_metric(uint32_t metric_type, const char *name, size_t name_len,
                             uint32_t *ret_id);

/* Adds delta to a counter or gauge. */
PW_IMPORT(proxy_increment_metric)
uint32_t proxy_increment_metric(uint32_t metric_id, int64_t delta);

/* Sets a gauge, or records a histogram sample. */
PW_IMPORT(proxy_record_metric)
uint32_t proxy_record_metric(uint32_t metric_id, uint64_t value);

/* ------------------------------------------------------------------------------------------
 * Exports.
 *
 * EXPORT(proxy_on_request_headers) exports the function that follows under that name, e.g.
 *
 *   EXPORT(proxy_on_request_headers)
 *   uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t num_headers, uint32_t eos) {...}
 *
 * The callbacks of ABI 0.2.1 (export those the filter needs; the host treats a missing HTTP
 * callback as CONTINUE and, for bodies, need not buffer anything):
 *   void     proxy_abi_version_0_2_1(void)                       marker, always exported
 *   void     proxy_on_context_create(ctx, parent)                 root: parent 0; HTTP: root id
 *   uint32_t proxy_on_vm_start(root, vm_config_size)              1 = ok
 *   uint32_t proxy_on_configure(root, plugin_config_size)         1 = ok, 0 rejects the config
 *   uint32_t proxy_on_request_headers(ctx, num_headers, eos)      pw_action
 *   uint32_t proxy_on_request_body(ctx, body_size, eos)           pw_action
 *   uint32_t proxy_on_response_headers(ctx, num_headers, eos)     pw_action
 *   uint32_t proxy_on_response_body(ctx, body_size, eos)          pw_action
 *   void     proxy_on_log(ctx)                                    request done: access-log time
 *   uint32_t proxy_on_done(ctx)                                   1 = the context may be deleted
 *   void     proxy_on_delete(ctx)                                 forget the context's state
 * ---------------------------------------------------------------------------------------- */

#define EXPORT(name) __attribute__((export_name(#name)))

/* The ABI version marker the host checks for. */
EXPORT(proxy_abi_version_0_2_1)
void proxy_abi_version_0_2_1(void) {}

/* ------------------------------------------------------------------------------------------
 * The pieces of libc clang may call (struct copies, zeroing). -fno-builtin keeps clang from
 * turning these loops back into calls to themselves.
 * ---------------------------------------------------------------------------------------- */

void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = (unsigned char *)dst;
  const unsigned char *s = (const unsigned char *)src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  unsigned char *d = (unsigned char *)dst;
  const unsigned char *s = (const unsigned char *)src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  unsigned char *d = (unsigned char *)dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
  for (; n; n--, x++, y++) {
    if (*x != *y) return *x < *y ? -1 : 1;
  }
  return 0;
}

/* ------------------------------------------------------------------------------------------
 * The allocator.
 * ---------------------------------------------------------------------------------------- */

extern unsigned char __heap_base; /* provided by wasm-ld: the first byte after static data */

#define PW_PAGE 65536u
#define PW_ALIGN 8u

static uintptr_t pw_arena_top;   /* next free byte; 0 until the first allocation */
static uint32_t pw_arena_live;   /* allocations not yet freed */

/* Allocates size bytes (8-byte aligned) from the arena; 0 when memory cannot grow. The host
 * calls this to place the buffers it returns, and filters may call it directly. */
EXPORT(proxy_on_memory_allocate)
void *proxy_on_memory_allocate(size_t size) {
  uintptr_t base = ((uintptr_t)&__heap_base + (PW_ALIGN - 1)) & ~(uintptr_t)(PW_ALIGN - 1);
  if (pw_arena_top == 0) pw_arena_top = base;
  uintptr_t p = (pw_arena_top + (PW_ALIGN - 1)) & ~(uintptr_t)(PW_ALIGN - 1);
  uint64_t end = (uint64_t)p + size;
  uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * PW_PAGE;
  if (end > have) {
    uint64_t pages = (end - have + PW_PAGE - 1) / PW_PAGE;
    if (end > 0xFFFFFFFFull || __builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1)
      return 0;
  }
  pw_arena_top = (uintptr_t)end;
  pw_arena_live++;
  return (void *)p;
}

/* Frees an allocation of proxy_on_memory_allocate (the filter's own, or one the host handed
 * over). The space comes back when every allocation has been freed: the arena then resets. */
static inline void pw_free(void *p) {
  if (p == 0 || pw_arena_live == 0) return;
  if (--pw_arena_live == 0) pw_arena_top = 0;
}

/* Allocates and counts like proxy_on_memory_allocate; pair with pw_free. */
static inline void *pw_alloc(size_t size) { return proxy_on_memory_allocate(size); }

/* ------------------------------------------------------------------------------------------
 * Helpers.
 * ---------------------------------------------------------------------------------------- */

/* A property path literal and its length, for proxy_get_property:
 *   proxy_get_property(PW_PATH("gpt_oss\0usage\0total_tokens"), &ptr, &len); */
#define PW_PATH(lit) (lit), (sizeof(lit) - 1)

/* A string literal and its length: proxy_log(PW_LOG_INFO, PW_STR("hello")). */
#define PW_STR(lit) (lit), (sizeof(lit) - 1)

static inline size_t pw_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

static inline char pw_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

static inline int pw_is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* 1 when a[0..alen) starts with the NUL-terminated prefix, ignoring ASCII case. */
static inline int pw_starts_with_nocase(const char *a, size_t alen, const char *prefix) {
  size_t i = 0;
  for (; prefix[i]; i++) {
    if (i >= alen || pw_lower(a[i]) != pw_lower(prefix[i])) return 0;
  }
  return 1;
}

/* Logs a NUL-terminated message. */
static inline void pw_log(uint32_t level, const char *msg) { proxy_log(level, msg, pw_strlen(msg)); }

/* A fixed-size text builder, for log lines and header values; silently truncates. */
typedef struct {
  char data[512];
  size_t len;
} pw_text;

static inline void pw_text_bytes(pw_text *t, const char *s, size_t n) {
  for (size_t i = 0; i < n && t->len < sizeof t->data; i++) t->data[t->len++] = s[i];
}

static inline void pw_text_str(pw_text *t, const char *s) { pw_text_bytes(t, s, pw_strlen(s)); }

static inline void pw_text_i64(pw_text *t, int64_t v) {
  char digits[20];
  size_t n = 0;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do {
    digits[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) pw_text_bytes(t, "-", 1);
  while (n) pw_text_bytes(t, &digits[--n], 1);
}

/* Reads a property holding an 8-byte little-endian int64. 1 with *out set when found, 0 when
 * the host has no such property (or it is not 8 bytes). */
static inline int pw_get_property_i64(const char *path, size_t path_len, int64_t *out) {
  char *p = 0;
  size_t n = 0;
  uint32_t st = proxy_get_property(path, path_len, &p, &n);
  int ok = st == PW_OK && p != 0 && n == 8;
  if (ok) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
    *out = (int64_t)v;
  }
  pw_free(p);
  return ok;
}

/* Header map serialization, as proxy_send_local_response takes it: u32 count, then count x
 * (u32 key_len, u32 value_len), then for each pair the key bytes, 0, the value bytes, 0; all
 * integers little-endian. pw_headers_size gives the size; pw_headers_write fills buf. */
typedef struct {
  const char *key;
  const char *value;
} pw_header;

static inline size_t pw_headers_size(const pw_header *h, uint32_t n) {
  size_t size = 4 + 8 * (size_t)n;
  for (uint32_t i = 0; i < n; i++) size += pw_strlen(h[i].key) + 1 + pw_strlen(h[i].value) + 1;
  return size;
}

static inline void pw_put_u32(char *p, uint32_t v) {
  p[0] = (char)v;
  p[1] = (char)(v >> 8);
  p[2] = (char)(v >> 16);
  p[3] = (char)(v >> 24);
}

static inline void pw_headers_write(const pw_header *h, uint32_t n, char *buf) {
  pw_put_u32(buf, n);
  char *data = buf + 4 + 8 * (size_t)n;
  for (uint32_t i = 0; i < n; i++) {
    size_t kl = pw_strlen(h[i].key), vl = pw_strlen(h[i].value);
    pw_put_u32(buf + 4 + 8 * i, (uint32_t)kl);
    pw_put_u32(buf + 8 + 8 * i, (uint32_t)vl);
    memcpy(data, h[i].key, kl);
    data += kl;
    *data++ = 0;
    memcpy(data, h[i].value, vl);
    data += vl;
    *data++ = 0;
  }
}

/* ------------------------------------------------------------------------------------------
 * Per-context state: an open-addressing table from context id (never 0) to one uint32_t of
 * filter-defined state. PW_CTX_SLOTS concurrent contexts at most (a power of two); pw_ctx_put
 * returns 0 when the table is full, and the filter must then behave as if it had no state.
 * ---------------------------------------------------------------------------------------- */

#ifndef PW_CTX_SLOTS
#define PW_CTX_SLOTS 4096u
#endif

typedef struct {
  uint32_t id; /* 0: empty slot */
  uint32_t value;
} pw_ctx_entry;

static pw_ctx_entry pw_ctx_table[PW_CTX_SLOTS];
static uint32_t pw_ctx_count;

static inline uint32_t pw_ctx_home(uint32_t id) {
  return (id * 2654435761u) & (PW_CTX_SLOTS - 1);
}

/* The state of context id, or 0 when it has none. */
static inline uint32_t *pw_ctx_get(uint32_t id) {
  if (id == 0) return 0;
  for (uint32_t i = pw_ctx_home(id), n = 0; n < PW_CTX_SLOTS; i = (i + 1) & (PW_CTX_SLOTS - 1), n++) {
    if (pw_ctx_table[i].id == id) return &pw_ctx_table[i].value;
    if (pw_ctx_table[i].id == 0) return 0;
  }
  return 0;
}

/* The state of context id, created (as 0) when absent; 0 when the table is full. */
static inline uint32_t *pw_ctx_put(uint32_t id) {
  uint32_t *v = pw_ctx_get(id);
  if (v || id == 0 || pw_ctx_count >= PW_CTX_SLOTS - 1) return v;
  uint32_t i = pw_ctx_home(id);
  while (pw_ctx_table[i].id != 0) i = (i + 1) & (PW_CTX_SLOTS - 1);
  pw_ctx_table[i].id = id;
  pw_ctx_table[i].value = 0;
  pw_ctx_count++;
  return &pw_ctx_table[i].value;
}

/* Forgets context id (call from proxy_on_delete). Backward-shift deletion keeps every other
 * entry reachable from its home slot without tombstones. */
static inline void pw_ctx_del(uint32_t id) {
  if (id == 0) return;
  uint32_t i = pw_ctx_home(id);
  for (uint32_t n = 0;; i = (i + 1) & (PW_CTX_SLOTS - 1), n++) {
    if (n >= PW_CTX_SLOTS || pw_ctx_table[i].id == 0) return;
    if (pw_ctx_table[i].id == id) break;
  }
  pw_ctx_count--;
  for (uint32_t j = i;;) {
    j = (j + 1) & (PW_CTX_SLOTS - 1);
    if (pw_ctx_table[j].id == 0) break;
    uint32_t k = pw_ctx_home(pw_ctx_table[j].id);
    /* The entry at j may stay if its home k lies cyclically in (i, j]. */
    int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (stays) continue;
    pw_ctx_table[i] = pw_ctx_table[j];
    i = j;
  }
  pw_ctx_table[i].id = 0;
  pw_ctx_table[i].value = 0;
}

#endif /* PROXY_WASM_H */

/*
 * api_key: rejects requests that do not carry one of the configured API keys.
 *
 * Configuration (the plugin configuration buffer, read in proxy_on_configure): the accepted
 * keys, separated by whitespace and/or commas, e.g. "sk-alpha, sk-beta sk-gamma". An empty
 * configuration (or one with no key in it) is rejected: proxy_on_configure returns 0.
 *
 * On request headers, the key is taken from "authorization: Bearer <key>" or else from the
 * "x-api-key" header. A request with no key, or with a key that is not configured, is
 * answered by the plugin with a 401 and an OpenAI-shaped error body:
 *
 *   {"error":{"message":"Invalid API key (checked by the api_key plugin)",
 *             "type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
 *
 * (on one line; "Missing API key ..." when the request has none), with header
 * "content-type: application/json", and the callback returns PAUSE. A good key: CONTINUE.
 *
 * The keys are copied into static storage: a filter must not keep arena allocations across
 * callbacks (see proxy_wasm.h), and the configuration is needed for every request.
 */
#include "proxy_wasm.h"

/* Limits of the static key store. A configuration beyond them is rejected. */
#define MAX_KEY_BYTES 65536
#define MAX_KEYS 1024

static char key_bytes[MAX_KEY_BYTES]; /* the keys, back to back */
static uint32_t key_off[MAX_KEYS];
static uint32_t key_len[MAX_KEYS];
static uint32_t key_count;

static const char BODY_MISSING[] =
    "{\"error\":{\"message\":\"Missing API key (checked by the api_key plugin)\","
    "\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}";
static const char BODY_INVALID[] =
    "{\"error\":{\"message\":\"Invalid API key (checked by the api_key plugin)\","
    "\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}";

static int is_separator(char c) { return c == ',' || pw_is_space(c); }

/* Parses cfg[0..n) into the key store. 1 on success; 0 (store left empty) when there is no key
 * or the limits are exceeded. */
static int load_keys(const char *cfg, size_t n) {
  uint32_t count = 0, used = 0;
  size_t i = 0;
  while (i < n) {
    while (i < n && is_separator(cfg[i])) i++;
    size_t start = i;
    while (i < n && !is_separator(cfg[i])) i++;
    size_t len = i - start;
    if (len == 0) continue;
    if (count == MAX_KEYS || used + len > MAX_KEY_BYTES) {
      pw_log(PW_LOG_ERROR, "api_key: configuration rejected: too many keys");
      key_count = 0;
      return 0;
    }
    memcpy(key_bytes + used, cfg + start, len);
    key_off[count] = used;
    key_len[count] = (uint32_t)len;
    used += (uint32_t)len;
    count++;
  }
  key_count = count;
  return count > 0;
}

/* 1 when key[0..n) is one of the configured keys. Compares against every key of the same
 * length without stopping at the first difference, so the time taken does not tell an
 * attacker how much of a key was right. */
static int key_is_known(const char *key, size_t n) {
  uint32_t found = 0;
  for (uint32_t k = 0; k < key_count; k++) {
    if (key_len[k] != n) continue;
    const char *candidate = key_bytes + key_off[k];
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(candidate[i] ^ key[i]);
    found |= (diff == 0);
  }
  return found != 0;
}

/* Trims ASCII whitespace off both ends of [*p, *p + *n). */
static void trim(const char **p, size_t *n) {
  while (*n && pw_is_space(**p)) (*p)++, (*n)--;
  while (*n && pw_is_space((*p)[*n - 1])) (*n)--;
}

/* Answers the request with a 401 and the given JSON body. */
static void reject(const char *body, size_t body_len, const char *details) {
  static const pw_header headers[] = {{"content-type", "application/json"}};
  const uint32_t n = sizeof headers / sizeof headers[0];
  size_t size = pw_headers_size(headers, n);
  char *serialized = pw_alloc(size);
  if (serialized == 0) {
    pw_log(PW_LOG_ERROR, "api_key: out of memory");
    return;
  }
  pw_headers_write(headers, n, serialized);
  uint32_t st = proxy_send_local_response(401, details, pw_strlen(details), body, body_len,
                                          serialized, size, -1);
  if (st != PW_OK) pw_log(PW_LOG_ERROR, "api_key: proxy_send_local_response failed");
  pw_free(serialized);
}

/* ---- lifecycle ------------------------------------------------------------------------ */

EXPORT(proxy_on_context_create)
void proxy_on_context_create(uint32_t ctx, uint32_t parent) {
  (void)ctx;
  (void)parent;
}

EXPORT(proxy_on_vm_start)
uint32_t proxy_on_vm_start(uint32_t root, uint32_t vm_config_size) {
  (void)root;
  (void)vm_config_size;
  return 1;
}

EXPORT(proxy_on_configure)
uint32_t proxy_on_configure(uint32_t root, uint32_t config_size) {
  (void)root;
  if (config_size == 0) {
    key_count = 0;
    pw_log(PW_LOG_ERROR, "api_key: configuration rejected: it lists no API key");
    return 0;
  }
  char *cfg = 0;
  size_t n = 0;
  uint32_t st = proxy_get_buffer_bytes(PW_BUFFER_PLUGIN_CONFIGURATION, 0, config_size, &cfg, &n);
  int ok = st == PW_OK && cfg != 0 && load_keys(cfg, n);
  pw_free(cfg);
  if (!ok) {
    key_count = 0;
    pw_log(PW_LOG_ERROR, "api_key: configuration rejected: it lists no API key");
    return 0;
  }
  pw_text t = {.len = 0};
  pw_text_str(&t, "api_key: ");
  pw_text_i64(&t, key_count);
  pw_text_str(&t, key_count == 1 ? " key configured" : " keys configured");
  proxy_log(PW_LOG_INFO, t.data, t.len);
  return 1;
}

EXPORT(proxy_on_log)
void proxy_on_log(uint32_t ctx) { (void)ctx; }

EXPORT(proxy_on_done)
uint32_t proxy_on_done(uint32_t ctx) {
  (void)ctx;
  return 1;
}

EXPORT(proxy_on_delete)
void proxy_on_delete(uint32_t ctx) { (void)ctx; }

/* ---- HTTP ----------------------------------------------------------------------------- */

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t num_headers, uint32_t end_of_stream) {
  (void)ctx;
  (void)num_headers;
  (void)end_of_stream;
  char *auth = 0, *xkey = 0;
  size_t auth_len = 0, xkey_len = 0;
  const char *key = 0;
  size_t key_n = 0;

  /* authorization: Bearer <key> (the scheme is case-insensitive). */
  if (proxy_get_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, PW_STR("authorization"), &auth,
                                 &auth_len) == PW_OK && auth) {
    const char *v = auth;
    size_t n = auth_len;
    trim(&v, &n);
    if (n > 7 && pw_starts_with_nocase(v, n, "bearer") && (v[6] == ' ' || v[6] == '\t')) {
      v += 7;
      n -= 7;
      trim(&v, &n);
      if (n) key = v, key_n = n;
    }
  }
  /* else x-api-key: <key> */
  if (key == 0 && proxy_get_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, PW_STR("x-api-key"),
                                             &xkey, &xkey_len) == PW_OK && xkey) {
    const char *v = xkey;
    size_t n = xkey_len;
    trim(&v, &n);
    if (n) key = v, key_n = n;
  }

  uint32_t action = PW_CONTINUE;
  if (key == 0) {
    reject(BODY_MISSING, sizeof BODY_MISSING - 1, "api_key_missing");
    action = PW_PAUSE;
  } else if (!key_is_known(key, key_n)) {
    reject(BODY_INVALID, sizeof BODY_INVALID - 1, "api_key_invalid");
    action = PW_PAUSE;
  }
  pw_free(auth);
  pw_free(xkey);
  return action;
}

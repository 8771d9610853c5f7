/*
 * redact_email: replaces every e-mail address in a request body with "[email redacted]".
 *
 * An e-mail address here is a local part of [A-Za-z0-9._%+-]+, an '@', and a domain of
 * labels [A-Za-z0-9-]+ separated by dots, at least two labels, the last one of two or more
 * letters. The longest such domain is taken: in "mail bob@mail.example.org." the address is
 * "bob@mail.example.org" and the sentence keeps its final dot.
 *
 * The body is read whole: while end_of_stream is 0 the callback returns PAUSE, and the host
 * buffers the body and calls again with all of it. When something was replaced the new body
 * is written back with proxy_set_buffer_bytes (the host fixes content-length), the request
 * gets the header "x-redacted-emails: <count>", and the counter metric
 * redact_email_redactions_total grows by the count. A body without an address is left alone.
 *
 * The bodies are OpenAI JSON requests, so the match never starts inside a JSON escape: in
 * "...\nalice@example.com" the local part is "alice", not "nalice" (replacing "nalice" would
 * leave "\[", an invalid escape). The replacement has no character JSON would need escaped,
 * so a valid JSON body stays valid.
 */
#include "proxy_wasm.h"

static const char REPLACEMENT[] = "[email redacted]";
#define REPLACEMENT_LEN (sizeof REPLACEMENT - 1)

static uint32_t redactions_metric;
static int have_metric;

static int is_alpha(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_local_char(char c) {
  return is_alpha(c) || is_digit(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
static int is_label_char(char c) { return is_alpha(c) || is_digit(c) || c == '-'; }

/* Given the '@' at s[at], with no match allowed to reach before s[floor], finds the address
 * around it: 1 with [*start, *end) set, or 0. */
static int match_at(const char *s, size_t n, size_t floor, size_t at, size_t *start,
                    size_t *end) {
  /* Local part: leftwards from the '@'. */
  size_t b = at;
  while (b > floor && is_local_char(s[b - 1])) b--;
  /* Not inside a JSON escape: after an odd run of backslashes s[b] is an escaped character
   * ("\n", or "\u" and four hex digits, which are all local-part characters). */
  size_t slashes = 0;
  while (b > slashes && s[b - 1 - slashes] == '\\') slashes++;
  if (slashes % 2 == 1) b += (s[b] == 'u') ? 5 : 1;
  if (b >= at) return 0;

  /* Domain: labels separated by single dots, rightwards from the '@'. Remember where the
   * longest acceptable domain (two labels or more, the last all letters, 2+ long) ends. */
  size_t i = at + 1, best = 0;
  uint32_t labels = 0;
  while (i < n && is_label_char(s[i])) {
    size_t label = i;
    int letters = 1;
    while (i < n && is_label_char(s[i])) {
      letters &= is_alpha(s[i]);
      i++;
    }
    labels++;
    if (labels >= 2 && letters && i - label >= 2) best = i;
    if (i + 1 < n && s[i] == '.' && is_label_char(s[i + 1])) {
      i++;
      continue;
    }
    break;
  }
  if (best == 0) return 0;
  *start = b;
  *end = best;
  return 1;
}

/* Scans s[0..n). Returns the number of addresses; when out is not 0, also writes the redacted
 * text there (out must hold redacted_len bytes, which the first pass, with out == 0, gives). */
static uint32_t redact(const char *s, size_t n, char *out, size_t *redacted_len) {
  uint32_t count = 0;
  size_t copied = 0; /* s[0..copied) is accounted for */
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '@') continue;
    size_t start, end;
    if (!match_at(s, n, copied, i, &start, &end)) continue;
    if (out) {
      memcpy(out + len, s + copied, start - copied);
      memcpy(out + len + (start - copied), REPLACEMENT, REPLACEMENT_LEN);
    }
    len += (start - copied) + REPLACEMENT_LEN;
    copied = end;
    count++;
    i = end - 1;
  }
  if (out) memcpy(out + len, s + copied, n - copied);
  len += n - copied;
  *redacted_len = len;
  return count;
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
  (void)config_size;
  if (!have_metric) {
    if (proxy_define_metric(PW_METRIC_COUNTER, PW_STR("redact_email_redactions_total"),
                            &redactions_metric) == PW_OK)
      have_metric = 1;
    else
      pw_log(PW_LOG_WARN, "redact_email: cannot define redact_email_redactions_total");
  }
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

EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t body_size, uint32_t end_of_stream) {
  (void)ctx;
  if (!end_of_stream) return PW_PAUSE; /* let the host buffer the whole body */
  if (body_size == 0) return PW_CONTINUE;

  char *body = 0;
  size_t n = 0;
  if (proxy_get_buffer_bytes(PW_BUFFER_HTTP_REQUEST_BODY, 0, body_size, &body, &n) != PW_OK ||
      body == 0) {
    pw_log(PW_LOG_WARN, "redact_email: cannot read the request body");
    pw_free(body);
    return PW_CONTINUE;
  }

  size_t new_len = 0;
  uint32_t count = redact(body, n, 0, &new_len);
  if (count > 0) {
    char *redacted = pw_alloc(new_len ? new_len : 1);
    if (redacted == 0) {
      pw_log(PW_LOG_ERROR, "redact_email: out of memory; body left as it was");
    } else {
      redact(body, n, redacted, &new_len);
      if (proxy_set_buffer_bytes(PW_BUFFER_HTTP_REQUEST_BODY, 0, (uint32_t)n, redacted,
                                 new_len) != PW_OK) {
        pw_log(PW_LOG_ERROR, "redact_email: cannot replace the request body");
      } else {
        pw_text t = {.len = 0};
        pw_text_i64(&t, count);
        proxy_add_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, PW_STR("x-redacted-emails"),
                                   t.data, t.len);
        if (have_metric) proxy_increment_metric(redactions_metric, count);
      }
      pw_free(redacted);
    }
  }
  pw_free(body);
  return PW_CONTINUE;
}

/*
 * token_accounting: reports the token usage of each answer, from the host's properties
 *
 *   gpt_oss.usage.prompt_tokens, gpt_oss.usage.completion_tokens, gpt_oss.usage.total_tokens
 *     (8-byte little-endian int64 each; NOT_FOUND while, or when, the response has no usage)
 *   gpt_oss.model (the model's name, a string)
 *
 * - A non-streamed JSON answer (content-type application/json...) gets the response headers
 *   x-usage-prompt-tokens, x-usage-completion-tokens and x-usage-total-tokens. The usage is
 *   known only once the whole body has been seen, so on response headers the filter returns
 *   PAUSE (the host holds the response header back), returns PAUSE again on every body chunk
 *   before the end (the host buffers them), and at end_of_stream adds the headers and returns
 *   CONTINUE: the host then sends the header, with the new fields, and the body.
 * - Every answer, streamed (text/event-stream) or not, is counted in the counter metrics
 *   token_accounting_prompt_tokens_total and token_accounting_completion_tokens_total, and
 *   logged in one INFO line "model=<m> prompt=<p> completion=<c>" from proxy_on_log, when the
 *   request is over ("-" for what the host does not know).
 *
 * Whether a context is holding its response is per-request state, kept in the context table
 * of proxy_wasm.h and forgotten in proxy_on_delete.
 */
#include "proxy_wasm.h"

#define HOLDING 1u /* context state: the response header is held until the body's end */

static uint32_t prompt_metric, completion_metric;
static int have_metrics;

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
  if (!have_metrics) {
    have_metrics =
        proxy_define_metric(PW_METRIC_COUNTER, PW_STR("token_accounting_prompt_tokens_total"),
                            &prompt_metric) == PW_OK &&
        proxy_define_metric(PW_METRIC_COUNTER,
                            PW_STR("token_accounting_completion_tokens_total"),
                            &completion_metric) == PW_OK;
    if (!have_metrics) pw_log(PW_LOG_WARN, "token_accounting: cannot define the metrics");
  }
  return 1;
}

EXPORT(proxy_on_done)
uint32_t proxy_on_done(uint32_t ctx) {
  (void)ctx;
  return 1;
}

EXPORT(proxy_on_delete)
void proxy_on_delete(uint32_t ctx) { pw_ctx_del(ctx); }

/* ---- HTTP ----------------------------------------------------------------------------- */

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t num_headers, uint32_t end_of_stream) {
  (void)num_headers;
  if (end_of_stream) return PW_CONTINUE; /* no body: no usage to wait for */
  char *ct = 0;
  size_t ct_len = 0;
  int json = proxy_get_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, PW_STR("content-type"),
                                        &ct, &ct_len) == PW_OK &&
             ct && pw_starts_with_nocase(ct, ct_len, "application/json");
  pw_free(ct);
  if (!json) return PW_CONTINUE;
  uint32_t *state = pw_ctx_put(ctx);
  if (state == 0) {
    pw_log(PW_LOG_WARN, "token_accounting: too many requests at once; no usage headers");
    return PW_CONTINUE;
  }
  *state |= HOLDING;
  return PW_PAUSE;
}

/* Adds response header name with the decimal value of property path, when the host has it. */
static void add_usage_header(const char *name, size_t name_len, const char *path,
                             size_t path_len) {
  int64_t v;
  if (!pw_get_property_i64(path, path_len, &v)) return;
  pw_text t = {.len = 0};
  pw_text_i64(&t, v);
  proxy_add_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, name, name_len, t.data, t.len);
}

EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t body_size, uint32_t end_of_stream) {
  (void)body_size;
  uint32_t *state = pw_ctx_get(ctx);
  if (state == 0 || !(*state & HOLDING)) return PW_CONTINUE;
  if (!end_of_stream) return PW_PAUSE; /* keep holding: the host buffers the body */
  add_usage_header(PW_STR("x-usage-prompt-tokens"), PW_PATH("gpt_oss\0usage\0prompt_tokens"));
  add_usage_header(PW_STR("x-usage-completion-tokens"),
                   PW_PATH("gpt_oss\0usage\0completion_tokens"));
  add_usage_header(PW_STR("x-usage-total-tokens"), PW_PATH("gpt_oss\0usage\0total_tokens"));
  *state &= ~HOLDING;
  return PW_CONTINUE;
}

EXPORT(proxy_on_log)
void proxy_on_log(uint32_t ctx) {
  (void)ctx;
  int64_t prompt = 0, completion = 0;
  int have_prompt = pw_get_property_i64(PW_PATH("gpt_oss\0usage\0prompt_tokens"), &prompt);
  int have_completion =
      pw_get_property_i64(PW_PATH("gpt_oss\0usage\0completion_tokens"), &completion);
  if (have_metrics) {
    if (have_prompt && prompt > 0) proxy_increment_metric(prompt_metric, prompt);
    if (have_completion && completion > 0) proxy_increment_metric(completion_metric, completion);
  }

  char *model = 0;
  size_t model_len = 0;
  int have_model = proxy_get_property(PW_PATH("gpt_oss\0model"), &model, &model_len) == PW_OK &&
                   model && model_len > 0;
  pw_text t = {.len = 0};
  pw_text_str(&t, "model=");
  if (have_model)
    pw_text_bytes(&t, model, model_len);
  else
    pw_text_str(&t, "-");
  pw_text_str(&t, " prompt=");
  if (have_prompt)
    pw_text_i64(&t, prompt);
  else
    pw_text_str(&t, "-");
  pw_text_str(&t, " completion=");
  if (have_completion)
    pw_text_i64(&t, completion);
  else
    pw_text_str(&t, "-");
  pw_free(model);
  proxy_log(PW_LOG_INFO, t.data, t.len);
}

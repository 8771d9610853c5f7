// proxy-wasm compatibility check filter, written only against the public
// @gcoredev/proxy-wasm-sdk-as API (same shape as the SDK README / examples).
//
// Plugin configuration: an arbitrary string, kept by the root context.
//   request headers  -> adds `x-as-filter: <configuration>` to the request
//   response headers -> adds `x-as-filter: <configuration>` to the response
//   `x-as-deny: 1`   -> local 403 JSON reply, iteration stopped
// One info line per request is logged through the SDK's `log`.

// Exports the proxy_on_* entry points and the host allocator (malloc).
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import {
  Context,
  FilterHeadersStatusValues,
  log,
  LogLevelValues,
  makeHeaderPair,
  registerRootContext,
  RootContext,
  send_http_response,
  stream_context,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";

const FILTER_HEADER = "x-as-filter";
const DENY_HEADER = "x-as-deny";
const DENY_BODY =
  '{"error":{"message":"denied by the AssemblyScript filter","type":"invalid_request_error","param":null,"code":"as_denied"}}';

class AsHeadersRoot extends RootContext {
  config: string = "";

  onConfigure(configuration_size: u32): bool {
    // The SDK base class reads the PluginConfiguration buffer into
    // getConfiguration(); keep our own copy of it.
    const ok = super.onConfigure(configuration_size);
    this.config = this.getConfiguration();
    log(LogLevelValues.info, "as_headers: configured with '" + this.config + "'");
    return ok;
  }

  createContext(context_id: u32): Context {
    return new AsHeaders(context_id, this);
  }
}

class AsHeaders extends Context {
  constructor(context_id: u32, root_context: AsHeadersRoot) {
    super(context_id, root_context);
  }

  config(): string {
    return (this.root_context as AsHeadersRoot).config;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const path = stream_context.headers.request.get(":path");
    const deny = stream_context.headers.request.get(DENY_HEADER) == "1";
    log(
      LogLevelValues.info,
      "as_headers: context " + this.context_id.toString() + " path=" + path +
        " deny=" + (deny ? "1" : "0") + " config=" + this.config(),
    );
    if (deny) {
      send_http_response(
        403,
        "as_denied",
        String.UTF8.encode(DENY_BODY),
        [makeHeaderPair("content-type", "application/json")],
      );
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add(FILTER_HEADER, this.config());
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add(FILTER_HEADER, this.config());
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new AsHeadersRoot(context_id);
}, "as_headers");

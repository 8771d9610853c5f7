-- wrk script of the proxy benchmark: POST a chat request, and print the run's figures as one
-- JSON line (prefix "WRK_JSON ") that benches/proxy/bench.py reads. Latencies are microseconds.
--   wrk -c64 -d10s -s benches/proxy/post.lua http://127.0.0.1:PORT/v1/chat/completions -- MODEL STREAM [THINK_MS]
-- THINK_MS > 0 paces the load: each connection waits a random time, THINK_MS on average
-- (uniform in 0..2*THINK_MS), before each request, so C connections offer about
-- C / (THINK_MS + latency) requests per millisecond instead of as many as the server can take.
function init(args)
   local model = args[1] or "gpt-oss-bench"
   local stream = args[2] or "false"
   local think = tonumber(args[3] or "0") or 0
   if think > 0 then
      math.randomseed(os.time() + math.floor(os.clock() * 1e6))
      delay = function()
         return math.floor(math.random() * 2 * think + 0.5)
      end
   end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = '{"model":"' .. model .. '","stream":' .. stream ..
      ',"messages":[{"role":"user","content":"What is the capital of the US?"}],"max_tokens":64}'
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99_9":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end

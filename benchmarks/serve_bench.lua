-- wrk script of benchmarks/serve_bench.py: POST /v1/recall, one user's history a request.
--
--   wrk -t1 -c64 -d10s --timeout 10s -s benchmarks/serve_bench.lua http://127.0.0.1:PORT -- BODIES
--
-- BODIES holds one JSON body a line ({"clicks": [...], "top_n": N}); each thread sends them
-- round-robin from its own starting line. Each thread counts its answers by status; done()
-- sums them and prints one line, "serve_bench_result " and a JSON object: requests, duration
-- (us), latency percentiles (us) over all answers (200, 503 and others), wrk's socket errors
-- (connect, read, write; timeout: requests that waited past --timeout) and the status counts.

wrk.method = "POST"
wrk.path = "/v1/recall"
wrk.headers["Content-Type"] = "application/json"

-- The setup/done state: it sees the threads, not their globals (get copies them out).
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- Each thread's own state from here to response().
function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  next_body = (id * 1009) % #bodies  -- threads start apart, so they send different users
  ok, shed, other = 0, 0, 0
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 503 then
    shed = shed + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local ok, shed, other = 0, 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("ok")
    shed = shed + thread:get("shed")
    other = other + thread:get("other")
  end
  -- The latency at rank (served / answered) of 1% from the top is at least the served answers'
  -- p99, whatever the 503s took: an upper bound of the 200s' p99 when some answers were 503.
  local answered = ok + shed + other
  local served_p99 = -1
  if ok > 0 then
    served_p99 = latency:percentile(100 - ok / answered)
  end
  local e = summary.errors
  io.write(string.format(
      'serve_bench_result {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
      '"p999_us": %d, "max_us": %d, "served_p99_bound_us": %d, "connect": %d, "read": %d, ' ..
      '"write": %d, "timeout": %d, "status_200": %d, "status_503": %d, "status_other": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      latency:percentile(99.9), latency.max, served_p99, e.connect, e.read, e.write, e.timeout,
      ok, shed, other))
end

-- wrk script: POST one fixed body and count the answers that are not right.
-- Environment: BENCH_BODY (a file holding the body), BENCH_CONTENT_TYPE, BENCH_HEADERS (more "Name: value"
-- lines, optional), BENCH_EXPECT (a file holding the right answer) and BENCH_MATCH ("exact", or "prefix":
-- the answer must start with it).
local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    return data
end
local expect = slurp(os.getenv("BENCH_EXPECT"))
local prefix = os.getenv("BENCH_MATCH") == "prefix"

wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+): ([^\n]+)") do
    wrk.headers[name] = value
end
wrk.body = slurp(os.getenv("BENCH_BODY"))

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
    local right
    if prefix then right = string.sub(body, 1, #expect) == expect else right = body == expect end
    if status ~= 200 or not right then bad = bad + 1 end
end
function done(summary, latency, requests)
    local wrong = 0
    for _, t in ipairs(threads) do wrong = wrong + t:get("bad") end
    io.write(string.format("RESULT requests=%d rps=%.2f p50_us=%d p99_us=%d wrong=%d errors=%d\n",
        summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50),
        latency:percentile(99), wrong, summary.errors.connect + summary.errors.read + summary.errors.write
        + summary.errors.status + summary.errors.timeout))
end

-- wrk script: POST one image as multipart/form-data to the proxy and count answers that are not the expected one.
-- Environment: BENCH_IMAGE (the file), BENCH_EXPECT (the exact JSON body a good answer has).
local f = assert(io.open(os.getenv("BENCH_IMAGE"), "rb"))
local image = f:read("*a")
f:close()
local expect = os.getenv("BENCH_EXPECT")
local boundary = "bench-boundary-7f3a"

wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
    .. "Content-Disposition: form-data; name=\"images\"; filename=\"digit.jpg\"\r\n"
    .. "Content-Type: image/jpeg\r\n\r\n" .. image .. "\r\n--" .. boundary .. "--\r\n"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
    if status ~= 200 or body ~= expect then bad = bad + 1 end
end
function done(summary, latency, requests)
    local wrong = 0
    for _, t in ipairs(threads) do wrong = wrong + t:get("bad") end
    io.write(string.format("RESULT rps=%.2f p50_us=%d p99_us=%d wrong=%d errors=%d\n",
        summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99), wrong,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
        + summary.errors.timeout))
end

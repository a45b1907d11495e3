-- wrk script: POST the benchmark's chat-completions request (benchmarks/request.json).
-- Usage: wrk ... -s benchmarks/post.lua URL -- [path/to/request.json]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

function init(args)
   local path = args[1] or "benchmarks/request.json"
   local f = assert(io.open(path, "rb"))
   local body = f:read("*a"):gsub("%s+$", "")
   f:close()
   wrk.body = body
end

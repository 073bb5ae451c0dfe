-- wrk script: POST the ingest body (read from the BODY_FILE environment variable), report JSON at the end.
local f = assert(io.open(os.getenv("BODY_FILE"), "r"))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("ACCESS_TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
wrk.body = f:read("*a")
f:close()
dofile(os.getenv("WRK_REPORT"))

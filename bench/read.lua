-- wrk script for bench/read.py: reads by id, round-robin over the lines of $IDS_FILE ("<id> <consistency token>").
-- $MODE: rest (GET /api/v1/data/{id}), rest_token (the same with the object's own, already reached, token in
-- X-Consistency-Token), graphql (dataObject with the peer's fields), graphql_annotations (the same plus
-- annotations { annotationType content }), execution (GET /api/v1/executions/{id}). $TOKEN: the bearer token.
local ids, tokens, i = {}, {}, 0
for line in io.lines(os.getenv("IDS_FILE")) do
  local id, position = line:match("^(%S+)%s*(%S*)")
  if id then ids[#ids + 1] = id; tokens[#tokens + 1] = position end
end
local mode, token = os.getenv("MODE") or "rest", os.getenv("TOKEN")
wrk.headers["Content-Type"] = "application/json"
if token and #token > 0 then wrk.headers["Authorization"] = "Bearer " .. token end
local fields = "objectId contentType contentHash metadata createdAt"
if mode == "graphql_annotations" then fields = fields .. " annotations { annotationType content }" end
local query = '{"query":"query($id: String!){ dataObject(objectId: $id){ ' .. fields .. ' } }","variables":{"id":"'

request = function()
  i = i % #ids + 1
  if mode == "graphql" or mode == "graphql_annotations" then
    return wrk.format("POST", "/api/graphql", nil, query .. ids[i] .. '"}}')
  elseif mode == "execution" then
    return wrk.format("GET", "/api/v1/executions/" .. ids[i], nil, nil)
  elseif mode == "rest_token" then
    -- a headers table replaces wrk.headers: copy them
    local headers = {["X-Consistency-Token"] = tokens[i]}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    return wrk.format("GET", "/api/v1/data/" .. ids[i], headers, nil)
  end
  return wrk.format("GET", "/api/v1/data/" .. ids[i], nil, nil)
end

dofile(os.getenv("WRK_REPORT"))

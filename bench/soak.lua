-- Mixed traffic for bench/soak.sh: every 10 requests are 3 plain proxied, 2 authenticated,
-- 1 invalid token, 1 rate limited, 1 aggregate, 1 to a dead service, and 1 plain one that
-- closes its connection (so connections churn too).
local token = ""
local i = 0
local mix = {
  { path = "/api/open/a" },
  { path = "/api/open/b" },
  { path = "/api/open/c" },
  { path = "/api/secure/1", auth = "valid" },
  { path = "/api/secure/2", auth = "valid" },
  { path = "/api/secure/3", auth = "invalid" },
  { path = "/api/limited/x" },
  { path = "/api/agg/42" },
  { path = "/api/down/x" },
  { path = "/api/open/close", close = true },
}

function init(args)
  token = args[1]
end

function request()
  i = i % #mix + 1
  local r = mix[i]
  local headers = {}
  if r.auth == "valid" then
    headers["Authorization"] = "Bearer " .. token
  elseif r.auth == "invalid" then
    headers["Authorization"] = "Bearer " .. token .. "x"
  end
  if r.close then
    headers["Connection"] = "close"
  end
  return wrk.format("GET", r.path, headers)
end

-- wrk-writes.lua: tally writes from wrk, a load generator in C like pgbench, so that tally's
-- writes/s and the baseline's are measured by clients of the same weight (docs/performance.md).
-- Every request is a new transaction: a fresh uid, a random user, deposits and withdrawals of
-- 1.00 in turn.
--
-- Run by `tally bench --load-with`, which creates the users, passes them in TALLY_USERS (a file
-- of user ids, one a line) and audits what this script logs to TALLY_WRITES.<thread>:
--
--   tally bench --users 1000 --verify --database-url "$DATABASE_URL" \
--     --load-with 'wrk -t1 -c16 -d8s -s bench/wrk-writes.lua "$TALLY_URL"'
--
-- wrk calls request once before the run to check it, and never sends that request: its write
-- is logged as sent and stays without an answer, an outcome the audit allows.
--
-- Alone, without TALLY_USERS, it writes to users 1..1000, which must exist with funds, and
-- logs nothing:
--
--   wrk -t2 -c16 -d8s -s bench/wrk-writes.lua http://127.0.0.1:18080
local counter = 0
local prefix = ""
local users = {}
local log = nil
local threads = 0

-- setup runs once per thread, in wrk's main state: it numbers the threads for the log names.
function setup(thread)
  threads = threads + 1
  thread:set("thread", threads)
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6) + (thread or 0))
  -- 59 random bits a thread, so that runs on one database do not share uids.
  prefix = string.format("%08x-%04x-4%03x", math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff))
  local list = os.getenv("TALLY_USERS")
  if list then
    for line in io.lines(list) do
      users[#users + 1] = tonumber(line)
    end
  else
    for id = 1, 1000 do
      users[id] = id
    end
  end
  local writes = os.getenv("TALLY_WRITES")
  if writes then
    log = assert(io.open(writes .. "." .. thread, "w"))
  end
end

request = function()
  counter = counter + 1
  local uid = string.format("%s-8000-%012x", prefix, counter)
  local kind = (counter % 2 == 0) and "DEPOSIT" or "WITHDRAW"
  local user = users[math.random(1, #users)]
  if log then
    log:write("sent ", uid, " ", user, " ", kind, " 1.00\n")
  end
  local body = string.format('{"uid":"%s","user_id":%d,"type":"%s","amount":"1.00"}', uid, user, kind)
  return wrk.format("POST", "/v1/transaction", {["Content-Type"] = "application/json"}, body)
end

-- Answers are logged with their length, so that any body reads back byte for byte. wrk hands
-- bodies to Lua only when response is defined, so it is defined only when logging.
if os.getenv("TALLY_WRITES") then
  response = function(status, headers, body)
    log:write("answer ", status, " ", #body, "\n", body, "\n")
  end
end

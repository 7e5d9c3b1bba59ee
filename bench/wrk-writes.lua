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
--
-- With a rate after "--" (writes per second, each thread's), it sends in an open loop: each
-- thread sends on a fixed schedule, whatever the answers do, and times each answer from the
-- instant its request was due, not from when a free connection sent it, as wrk's own figures
-- do. At the end it prints the percentiles of those times:
--
--   wrk -t1 -c256 -d8s -s bench/wrk-writes.lua http://127.0.0.1:18080 -- 5000
--
-- The connections must outnumber the requests in flight, or the schedule falls behind; that
-- delay counts in the times, as it should. wrk's timers keep whole milliseconds, so a request
-- may start up to a millisecond before or after its instant; one that starts early is timed
-- from its start. A connection that fails and reconnects while it waits claims a second
-- instant; its errors show in wrk's "Socket errors" line.
local counter = 0
local prefix = ""
local users = {}
local log = nil
local threads = {}

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } tally_timespec;
int clock_gettime(int clock, tally_timespec *now);
]]
local timespec = ffi.new("tally_timespec")

-- now is CLOCK_MONOTONIC (1) in microseconds.
local function now()
  ffi.C.clock_gettime(1, timespec)
  return tonumber(timespec.tv_sec) * 1e6 + tonumber(timespec.tv_nsec) / 1e3
end

-- The open loop's state: the time between two sends (µs), the next send's due instant, the due
-- instants claimed by connections waiting for their timer (first in, first out), each request's
-- due instant by uid, and the answers' times (µs; openLoop and times are global for done).
local period = nil
local nextDue = nil
local waiting, first, last = {}, 1, 0
local dueOf = {}
times = {}

-- setup runs once per thread, in wrk's main state: it numbers the threads for the log names
-- and keeps them for done.
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread", #threads)
end

-- openDelay is delay in the open loop: it claims the next due instant for the connection that
-- asks and waits until then; a schedule that fell behind sends at once.
local function openDelay()
  local t = now()
  nextDue = nextDue or t
  local due = nextDue
  nextDue = nextDue + period
  last = last + 1
  waiting[last] = due
  return math.max(0, math.ceil((due - t) / 1000))
end

-- answer logs an answer with its length, so that any body reads back byte for byte, and in the
-- open loop times an answer that names its transaction (200 and 402) from its request's due
-- instant.
local function answer(status, headers, body)
  if log then
    log:write("answer ", status, " ", #body, "\n", body, "\n")
  end
  if period then
    local uid = string.match(body, '"uid":"([^"]+)"')
    if uid and dueOf[uid] then
      times[#times + 1] = now() - dueOf[uid]
      dueOf[uid] = nil
    end
  end
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
  -- wrk looks for delay and response after init: without them it sends each request as soon
  -- as the last one is answered and hands no bodies to Lua.
  if args[1] then
    period = 1e6 / assert(tonumber(args[1]), "after --: writes per second")
    openLoop, delay = true, openDelay
  end
  if log or period then
    response = answer
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
  if period then
    -- The k-th request sent takes the k-th instant claimed: wrk fires the timers due in one
    -- pass of its loop together, within a millisecond of each other. Its check of the
    -- script, before the run, finds none.
    if first <= last then
      dueOf[uid] = math.min(waiting[first], now())
      waiting[first] = nil
      first = first + 1
    end
  end
  local body = string.format('{"uid":"%s","user_id":%d,"type":"%s","amount":"1.00"}', uid, user, kind)
  return wrk.format("POST", "/v1/transaction", {["Content-Type"] = "application/json"}, body)
end

-- done, in wrk's main state, prints the open loop's percentiles, in milliseconds, over every
-- thread's answers.
function done(summary, latency, requests)
  if #threads == 0 or not threads[1]:get("openLoop") then
    return
  end
  local all = {}
  for _, thread in ipairs(threads) do
    for _, t in ipairs(thread:get("times")) do
      all[#all + 1] = t
    end
  end
  if #all == 0 then
    -- No percentiles: run.sh, which reads them, stops.
    io.write("open loop: no answer timed\n")
    return
  end
  table.sort(all)
  local function at(q)
    return all[math.max(1, math.ceil(q * #all))] / 1000
  end
  io.write(string.format("open loop: %d answers timed, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms\n",
    #all, at(0.5), at(0.99), at(0.999)))
end

-- Argo CD health check for aperag.io/ApeRAG (Lua 5.1, as Argo CD runs it).
-- Reads only what the operator writes (docs/design.md, "Status"):
--   status.observedGeneration  lags metadata.generation        -> Progressing (the change is not seen yet)
--   condition Paused=True (aperag.io/paused)                    -> Suspended
--   status.upgrade.phase BackingUp/Migrating/RollingOut/
--     RollingBack/Downgrading (an upgrade or rollback runs)     -> Progressing
--   condition Degraded=True                                     -> Degraded (a failed migration rolled back,
--                                                                  a missing Secret, a refused apply, ...)
--   condition Progressing=True, or Ready not True               -> Progressing (rolling out, databases starting)
--   condition Ready=True                                        -> Healthy
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  if text == "" then
    return fallback
  end
  return text
end

local active = {BackingUp = true, Migrating = true, RollingOut = true, RollingBack = true, Downgrading = true}

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local paused = condition(status, "Paused")
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(paused, "Reconciliation is paused")
  return hs
end

local upgrade = status.upgrade
if upgrade ~= nil and upgrade.phase ~= nil and active[upgrade.phase] then
  local operation = upgrade.operation or "Upgrade"
  local target = ""
  if upgrade.target ~= nil and upgrade.target.version ~= nil then
    target = " to " .. upgrade.target.version
  end
  hs.status = "Progressing"
  hs.message = operation .. target .. ": " .. upgrade.phase
  if upgrade.message ~= nil and upgrade.message ~= "" then
    hs.message = hs.message .. " (" .. upgrade.message .. ")"
  end
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end

local progressing = condition(status, "Progressing")
local ready = condition(status, "Ready")
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing, "Progressing")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  if status.version ~= nil then
    hs.message = "Version " .. status.version .. ": " .. hs.message
  end
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the components to become ready")
return hs

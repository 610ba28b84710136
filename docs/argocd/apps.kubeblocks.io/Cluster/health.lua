-- Argo CD health check for apps.kubeblocks.io/Cluster (KubeBlocks 1.0; Lua 5.1, as Argo CD runs it).
-- Argo CD has none built in. status.phase is one of Creating, Running, Updating, Stopping, Stopped,
-- Deleting, Failed, Abnormal:
--   status.observedGeneration lags metadata.generation  -> Progressing
--   Running                                             -> Healthy
--   Creating, Updating, Stopping, Deleting, no phase    -> Progressing
--   Stopped                                             -> Suspended (stopped on purpose: spec.componentSpecs[].stop)
--   Failed, Abnormal                                    -> Degraded, with the components that are not Running
local hs = {}

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for KubeBlocks to report the cluster's phase"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for KubeBlocks to observe generation " .. tostring(generation)
  return hs
end

local function unhealthy_components()
  local parts = {}
  if status.components ~= nil then
    local names = {}
    for name, _ in pairs(status.components) do
      table.insert(names, name)
    end
    table.sort(names)
    for _, name in ipairs(names) do
      local component = status.components[name]
      if component.phase ~= nil and component.phase ~= "Running" then
        local part = name .. " " .. component.phase
        if component.message ~= nil then
          local details = {}
          for key, value in pairs(component.message) do
            table.insert(details, key .. ": " .. tostring(value))
          end
          table.sort(details)
          if #details > 0 then
            part = part .. " (" .. table.concat(details, "; ") .. ")"
          end
        end
        table.insert(parts, part)
      end
    end
  end
  return table.concat(parts, ", ")
end

local function ready_message(fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == "Ready" and c.message ~= nil and c.message ~= "" then
        return c.message
      end
    end
  end
  return fallback
end

local phase = status.phase
if phase == "Running" then
  hs.status = "Healthy"
  hs.message = "Cluster is running"
elseif phase == "Stopped" then
  hs.status = "Suspended"
  hs.message = "Cluster is stopped"
elseif phase == "Failed" or phase == "Abnormal" then
  hs.status = "Degraded"
  local components = unhealthy_components()
  if components ~= "" then
    hs.message = "Cluster is " .. phase .. ": " .. components
  else
    hs.message = "Cluster is " .. phase .. ": " .. ready_message("see kubectl describe cluster")
  end
else
  hs.status = "Progressing"
  hs.message = "Cluster is " .. phase
end
return hs

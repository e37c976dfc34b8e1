-- DEVELOPMENT DATA ONLY: the reference platform's demo catalog, fleets, robots, tasks and edicts.
-- Fixed ids and ON CONFLICT DO NOTHING make it safe to load any number of times.

INSERT INTO patterns (id, name, description, category, parameters, defaults, tags) VALUES
('10000000-0000-4000-8000-000000000001', 'Industrial Arm - 6DOF', 'Six-axis articulated arm for pick, place and assembly', 'INDUSTRIAL_ARM',
 '{"reach": {"type": "number", "min": 0.5, "max": 3.0}, "payload": {"type": "number", "min": 1, "max": 50}}', '{"reach": 1.2, "payload": 10}', '{arm,6dof,industrial}'),
('10000000-0000-4000-8000-000000000002', 'Mobile Base - Differential Drive', 'Two-wheel differential drive base for indoor transport', 'MOBILE_ROBOT',
 '{"maxSpeed": {"type": "number", "min": 0.1, "max": 3.0}, "payload": {"type": "number", "min": 5, "max": 200}}', '{"maxSpeed": 1.5, "payload": 50}', '{mobile,warehouse}'),
('10000000-0000-4000-8000-000000000003', 'Quadruped - General Purpose', 'Four-legged platform for rough terrain inspection', 'QUADRUPED',
 '{"legLength": {"type": "number", "min": 0.2, "max": 1.0}, "gait": {"type": "string"}}', '{"legLength": 0.4, "gait": "trot"}', '{quadruped,inspection}'),
('10000000-0000-4000-8000-000000000004', 'Humanoid - Service', 'Bipedal service robot for human spaces', 'HUMANOID',
 '{"height": {"type": "number", "min": 1.2, "max": 2.0}}', '{"height": 1.6}', '{humanoid,service}'),
('10000000-0000-4000-8000-000000000005', 'Inspection Drone', 'Quadcopter for aerial inspection', 'DRONE',
 '{"flightTime": {"type": "number", "min": 10, "max": 60}}', '{"flightTime": 25}', '{drone,inspection}'),
('10000000-0000-4000-8000-000000000006', 'Custom Platform', 'Start from a blank design', 'CUSTOM', '{}', '{}', '{custom}')
ON CONFLICT (id) DO NOTHING;

INSERT INTO alloys (id, name, description, type, specifications, tags, version, compatibility) VALUES
('20000000-0000-4000-8000-000000000001', 'ServoMax Pro 3000', 'High-torque servo actuator', 'ACTUATOR', '{"torque": "45Nm", "speed": "60rpm", "voltage": "24V"}', '{servo,actuator}', '1.0.0',
 '[{"alloyId": "20000000-0000-4000-8000-000000000001", "compatibleWith": ["20000000-0000-4000-8000-000000000003", "20000000-0000-4000-8000-000000000004"], "constraints": {"voltage": "24V"}}]'),
('20000000-0000-4000-8000-000000000002', 'VisionEye 4K', '4K stereo vision sensor', 'SENSOR', '{"resolution": "3840x2160", "fps": 60, "fov": 90}', '{vision,camera}', '1.0.0', '[]'),
('20000000-0000-4000-8000-000000000003', 'GripForce Elite', 'Adaptive parallel gripper', 'END_EFFECTOR', '{"gripForce": "200N", "stroke": "85mm"}', '{gripper}', '1.0.0',
 '[{"alloyId": "20000000-0000-4000-8000-000000000003", "compatibleWith": ["20000000-0000-4000-8000-000000000001"], "constraints": null}]'),
('20000000-0000-4000-8000-000000000004', 'PowerCore 500W', '500 W lithium power module', 'POWER', '{"capacity": "500Wh", "voltage": "48V"}', '{battery,power}', '1.0.0', '[]'),
('20000000-0000-4000-8000-000000000005', 'NeuralCore X1', 'Edge AI controller', 'CONTROLLER', '{"tops": 32, "ram": "16GB"}', '{controller,ai}', '1.0.0', '[]'),
('20000000-0000-4000-8000-000000000006', 'TrackBase 200', 'Tracked mobile chassis', 'CHASSIS', '{"payload": "200kg", "maxSpeed": "1.5m/s"}', '{chassis,mobile}', '1.0.0', '[]'),
('20000000-0000-4000-8000-000000000007', 'MeshLink 5G', '5G and mesh radio module', 'COMMUNICATION', '{"bands": ["n78", "n79"], "mesh": true}', '{radio,5g}', '1.0.0', '[]'),
('20000000-0000-4000-8000-000000000008', 'LidarSweep 360', '360 degree lidar', 'SENSOR', '{"range": "100m", "points": 300000}', '{lidar,navigation}', '1.0.0', '[]')
ON CONFLICT (id) DO NOTHING;

INSERT INTO loci (id, name, description, coordinates, safety_zones) VALUES
('30000000-0000-4000-8000-000000000001', 'Factory Floor A', 'Main production floor', '{"latitude": 37.7749, "longitude": -122.4194, "altitude": 10}',
 '[{"id": "zone-a1", "name": "Press Line Exclusion", "type": "EXCLUSION", "boundaries": {"type": "rectangle", "x": 10, "y": 5, "width": 8, "height": 4}, "restrictions": ["NO_ENTRY"]}]'),
('30000000-0000-4000-8000-000000000002', 'Development Lab', 'R&D lab', '{"latitude": 37.7849, "longitude": -122.4094, "altitude": 15}', '[]'),
('30000000-0000-4000-8000-000000000003', 'Demo Warehouse', 'Customer demo warehouse', '{"latitude": 37.7649, "longitude": -122.4294, "altitude": 5}',
 '[{"id": "zone-w1", "name": "Loading Dock", "type": "SPEED_LIMIT", "boundaries": {"type": "rectangle", "x": 0, "y": 0, "width": 20, "height": 6}, "restrictions": ["MAX_SPEED_0_5"]}]'),
('30000000-0000-4000-8000-000000000004', 'Factory Simulation', 'Simulated factory', '{"latitude": 37.7549, "longitude": -122.4394, "altitude": 0}', '[]')
ON CONFLICT (id) DO NOTHING;

INSERT INTO fleets (id, name, description, locus_id, status) VALUES
('40000000-0000-4000-8000-000000000001', 'Assembly Line Alpha', 'Main assembly line fleet', '30000000-0000-4000-8000-000000000001', 'IDLE'),
('40000000-0000-4000-8000-000000000002', 'Dev Fleet Alpha', 'Development robots', '30000000-0000-4000-8000-000000000002', 'ACTIVE'),
('40000000-0000-4000-8000-000000000003', 'Demo Warehouse Bots', 'Warehouse demo fleet', '30000000-0000-4000-8000-000000000003', 'IDLE'),
('40000000-0000-4000-8000-000000000004', 'Factory Test Units', 'Units under test', '30000000-0000-4000-8000-000000000004', 'MAINTENANCE')
ON CONFLICT (id) DO NOTHING;

INSERT INTO sepulkas (id, name, description, version, pattern_id, status, parameters, created_by) VALUES
('50000000-0000-4000-8000-000000000001', 'DevBot-001', 'Development arm', '1.0.0', '10000000-0000-4000-8000-000000000001', 'READY', '{"reach": 1.4, "payload": 12}', '00000000-0000-4000-8000-000000000002'),
('50000000-0000-4000-8000-000000000002', 'WarehouseWorker-Demo', 'Warehouse transport robot', '1.0.0', '10000000-0000-4000-8000-000000000002', 'CAST_READY', '{"maxSpeed": 1.2, "payload": 80}', '00000000-0000-4000-8000-000000000003'),
('50000000-0000-4000-8000-000000000003', 'AssemblyBot-Test', 'Assembly test design', '0.1.0', '10000000-0000-4000-8000-000000000001', 'FORGING', '{"reach": 1.0}', '00000000-0000-4000-8000-000000000004')
ON CONFLICT (id) DO NOTHING;

INSERT INTO sepulka_alloys (sepulka_id, alloy_id) VALUES
('50000000-0000-4000-8000-000000000001', '20000000-0000-4000-8000-000000000001'),
('50000000-0000-4000-8000-000000000001', '20000000-0000-4000-8000-000000000002'),
('50000000-0000-4000-8000-000000000001', '20000000-0000-4000-8000-000000000003'),
('50000000-0000-4000-8000-000000000002', '20000000-0000-4000-8000-000000000004'),
('50000000-0000-4000-8000-000000000002', '20000000-0000-4000-8000-000000000006'),
('50000000-0000-4000-8000-000000000002', '20000000-0000-4000-8000-000000000008'),
('50000000-0000-4000-8000-000000000003', '20000000-0000-4000-8000-000000000001')
ON CONFLICT DO NOTHING;

INSERT INTO ingots (id, sepulka_id, version, build_hash, status, artifacts, build_logs, tempered, created_by) VALUES
('60000000-0000-4000-8000-000000000001', '50000000-0000-4000-8000-000000000001', '1.0.0', 'build_dev001_abc123', 'READY',
 '[{"type": "firmware", "path": "/artifacts/dev001/firmware.bin", "size": 2048576, "checksum": "sha256:abc123"}, {"type": "urdf", "path": "/artifacts/dev001/robot.urdf", "size": 15360, "checksum": "sha256:def456"}]',
 '{"Build started","Compiling firmware","Build complete"}', false, '00000000-0000-4000-8000-000000000002'),
('60000000-0000-4000-8000-000000000002', '50000000-0000-4000-8000-000000000002', '1.0.0', 'build_warehouse_xyz789', 'TEMPERED',
 '[{"type": "firmware", "path": "/artifacts/warehouse/firmware.bin", "size": 3145728, "checksum": "sha256:xyz789"}]',
 '{"Build started","Build complete","Tempering complete"}', true, '00000000-0000-4000-8000-000000000003')
ON CONFLICT (id) DO NOTHING;

INSERT INTO factory_floors (id, name, description, width_meters, height_meters, scale_factor, origin_x, origin_y, created_by) VALUES
('b0000000-0000-4000-8000-000000000001', 'Dev Lab Floor', 'Floor plan of the development lab', 40, 25, 20, 0, 0, '00000000-0000-4000-8000-000000000001')
ON CONFLICT (id) DO NOTHING;

INSERT INTO robots (id, name, sepulka_id, fleet_id, current_ingot_id, status, last_seen, last_pose, battery_level, health_score,
                    factory_floor_id, floor_position_x, floor_position_y, floor_position_theta) VALUES
('70000000-0000-4000-8000-000000000001', 'DevBot-Alpha', '50000000-0000-4000-8000-000000000001', '40000000-0000-4000-8000-000000000002', '60000000-0000-4000-8000-000000000001',
 'WORKING', now(), '{"position": {"x": 12.5, "y": 8.0, "z": 0}, "orientation": {"x": 0, "y": 0, "z": 0.3827, "w": 0.9239}, "jointPositions": {"j1": 0.1, "j2": -0.4}, "timestamp": "2026-11-01T00:00:00Z"}',
 87.5, 95.2, 'b0000000-0000-4000-8000-000000000001', 12.5, 8.0, 0.785),
('70000000-0000-4000-8000-000000000002', 'DevBot-Beta', '50000000-0000-4000-8000-000000000001', '40000000-0000-4000-8000-000000000002', '60000000-0000-4000-8000-000000000001',
 'IDLE', now() - interval '5 minutes', '{"position": {"x": 3, "y": 4, "z": 0}, "orientation": {"x": 0, "y": 0, "z": 0, "w": 1}, "timestamp": "2026-11-01T00:00:00Z"}',
 92.0, 98.1, NULL, NULL, NULL, NULL),
('70000000-0000-4000-8000-000000000003', 'WarehouseBot-Demo-01', '50000000-0000-4000-8000-000000000002', '40000000-0000-4000-8000-000000000003', '60000000-0000-4000-8000-000000000002',
 'CHARGING', now() - interval '1 minute', '{"position": {"x": -20, "y": 15, "z": 0}, "orientation": {"x": 0, "y": 0, "z": 0.7071, "w": 0.7071}, "timestamp": "2026-11-01T00:00:00Z"}',
 34.8, 88.0, NULL, NULL, NULL, NULL),
('70000000-0000-4000-8000-000000000004', 'WarehouseBot-Demo-02', '50000000-0000-4000-8000-000000000002', '40000000-0000-4000-8000-000000000003', '60000000-0000-4000-8000-000000000002',
 'WORKING', now(), '{"position": {"x": 40, "y": -10, "z": 0}, "orientation": {"x": 0, "y": 0, "z": 1, "w": 0}, "timestamp": "2026-11-01T00:00:00Z"}',
 71.3, 91.5, NULL, NULL, NULL, NULL)
ON CONFLICT (id) DO NOTHING;

INSERT INTO tasks (id, name, description, type, parameters, status, priority, fleet_id, scheduled_at, created_by) VALUES
('80000000-0000-4000-8000-000000000001', 'Pick parts from bin A', 'Move parts from bin A to the assembly tray', 'PICK_AND_PLACE', '{"source": "bin-A", "target": "tray-1", "count": 20}', 'IN_PROGRESS', 'NORMAL', '40000000-0000-4000-8000-000000000002', now() - interval '1 hour', '00000000-0000-4000-8000-000000000002'),
('80000000-0000-4000-8000-000000000002', 'Assemble gearbox', 'Assemble gearbox unit 7', 'ASSEMBLY', '{"unit": 7}', 'PENDING', 'HIGH', '40000000-0000-4000-8000-000000000002', now() + interval '2 hours', '00000000-0000-4000-8000-000000000002'),
('80000000-0000-4000-8000-000000000003', 'Inspect aisle 3', 'Visual inspection of aisle 3 shelving', 'INSPECTION', '{"aisle": 3}', 'COMPLETED', 'NORMAL', '40000000-0000-4000-8000-000000000003', now() - interval '1 day', '00000000-0000-4000-8000-000000000003'),
('80000000-0000-4000-8000-000000000004', 'Night patrol', 'Perimeter patrol of the warehouse', 'PATROL', '{"route": "perimeter"}', 'ASSIGNED', 'LOW', '40000000-0000-4000-8000-000000000003', now() + interval '8 hours', '00000000-0000-4000-8000-000000000003')
ON CONFLICT (id) DO NOTHING;

INSERT INTO task_robots (task_id, robot_id, estimated_duration, confidence) VALUES
('80000000-0000-4000-8000-000000000001', '70000000-0000-4000-8000-000000000001', 1800, 0.95),
('80000000-0000-4000-8000-000000000003', '70000000-0000-4000-8000-000000000004', 3600, 0.9),
('80000000-0000-4000-8000-000000000004', '70000000-0000-4000-8000-000000000003', 7200, 0.85)
ON CONFLICT DO NOTHING;

INSERT INTO runs (id, task_id, robot_id, status, started_at, completed_at, metrics, logs) VALUES
('90000000-0000-4000-8000-000000000001', '80000000-0000-4000-8000-000000000003', '70000000-0000-4000-8000-000000000004', 'COMPLETED', now() - interval '1 day', now() - interval '23 hours',
 '{"duration": 3540, "energyConsumed": 125.5, "accuracy": 0.98, "errors": 0, "warnings": 2, "performance": {"itemsInspected": 240}}', '{"Inspection started","Aisle 3 complete"}'),
('90000000-0000-4000-8000-000000000002', '80000000-0000-4000-8000-000000000001', '70000000-0000-4000-8000-000000000001', 'RUNNING', now() - interval '30 minutes', NULL,
 '{"duration": 1800, "energyConsumed": 40.2, "accuracy": 0.97, "errors": 0, "warnings": 0, "performance": {"picks": 11}}', '{"Picking started"}')
ON CONFLICT (id) DO NOTHING;

UPDATE fleets SET active_task_id = '80000000-0000-4000-8000-000000000001'
WHERE id = '40000000-0000-4000-8000-000000000002' AND active_task_id IS NULL;

INSERT INTO edicts (id, name, description, type, rules, severity, active, applies_to, created_by) VALUES
('a0000000-0000-4000-8000-000000000001', 'Maximum Speed Limit', 'Robots must not exceed 2 m/s', 'SAFETY',
 '{"condition": {"type": "metric", "operator": "AND", "rules": [{"metric": "VELOCITY", "op": "gt", "value": 2.0}]}, "actions": [{"type": "THROTTLE", "parameters": {"maxSpeed": 2.0}, "immediate": true}], "exceptions": []}',
 'CRITICAL', true, '{"fleets": [], "robots": [], "locations": [], "taskTypes": []}', '00000000-0000-4000-8000-000000000001'),
('a0000000-0000-4000-8000-000000000002', 'Battery Level Warning', 'Warn when battery drops below 20%', 'OPERATIONAL',
 '{"condition": {"type": "metric", "operator": "AND", "rules": [{"metric": "battery_level", "op": "lt", "value": 20}]}, "actions": [{"type": "WARN", "parameters": {}, "immediate": false}, {"type": "ALERT", "parameters": {"channel": "ops"}, "immediate": false}], "exceptions": []}',
 'WARNING', true, '{"fleets": [], "robots": [], "locations": [], "taskTypes": []}', '00000000-0000-4000-8000-000000000001'),
('a0000000-0000-4000-8000-000000000003', 'Force Limit Safety', 'Stop when end-effector force exceeds 150 N', 'SAFETY',
 '{"condition": {"type": "metric", "operator": "AND", "rules": [{"metric": "FORCE", "op": "gt", "value": 150}]}, "actions": [{"type": "EMERGENCY_STOP", "parameters": {}, "immediate": true}], "exceptions": []}',
 'CRITICAL', true, '{"fleets": ["40000000-0000-4000-8000-000000000001"], "robots": [], "locations": [], "taskTypes": ["ASSEMBLY"]}', '00000000-0000-4000-8000-000000000002')
ON CONFLICT (id) DO NOTHING;

UPDATE fleets SET constraint_ids = '{a0000000-0000-4000-8000-000000000001,a0000000-0000-4000-8000-000000000003}'
WHERE id = '40000000-0000-4000-8000-000000000001' AND constraint_ids = '{}';
UPDATE loci SET constraint_ids = '{a0000000-0000-4000-8000-000000000001}'
WHERE id = '30000000-0000-4000-8000-000000000001' AND constraint_ids = '{}';

-- An hour of telemetry (one sample a minute) for each demo robot, loaded once.
INSERT INTO telemetry (robot_id, fleet_id, seq, ts, status, battery_level, health_score, pose, metrics)
SELECT r.id, r.fleet_id, g.i, date_trunc('minute', now()) - (60 - g.i) * interval '1 minute', r.status,
       greatest(0, least(100, r.battery_level + (60 - g.i) * 0.05)), r.health_score, r.last_pose,
       jsonb_build_object(
         'BATTERY_SOC', round((r.battery_level + (60 - g.i) * 0.05)::numeric, 2),
         'BATTERY_VOLTAGE', round((48 + sin(g.i) * 0.4)::numeric, 2),
         'CPU_USAGE', round((35 + 10 * sin(g.i / 5.0))::numeric, 2),
         'MEMORY_USAGE', round((50 + 5 * cos(g.i / 7.0))::numeric, 2),
         'MOTOR_TEMPERATURE', round((45 + 5 * sin(g.i / 9.0))::numeric, 2),
         'VELOCITY', round((CASE WHEN r.status = 'WORKING' THEN 0.8 + 0.3 * sin(g.i) ELSE 0 END)::numeric, 2),
         'SIGNAL_STRENGTH', -65)
FROM robots r CROSS JOIN generate_series(1, 60) AS g(i)
WHERE r.id IN ('70000000-0000-4000-8000-000000000001', '70000000-0000-4000-8000-000000000002',
               '70000000-0000-4000-8000-000000000003', '70000000-0000-4000-8000-000000000004')
  AND NOT EXISTS (SELECT 1 FROM telemetry t WHERE t.robot_id = r.id)
ON CONFLICT DO NOTHING;

INSERT INTO robot_events (robot_id, fleet_id, seq, ts, type, severity, message, data)
SELECT '70000000-0000-4000-8000-000000000003', '40000000-0000-4000-8000-000000000003', 1, now() - interval '20 minutes',
       'BATTERY_LOW', 'WARNING', 'Battery below 40%, heading to charger', '{"batteryLevel": 39.5}'
WHERE NOT EXISTS (SELECT 1 FROM robot_events WHERE robot_id = '70000000-0000-4000-8000-000000000003' AND seq = 1);

-- Partitions for the history below (the worker would create them, moving the rows that arrived
-- first out of the DEFAULT partitions; made here so that no process has to on its first start).
SELECT partition_create(v.t::regclass, m.lo, ((m.lo AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC', v.k)
FROM (VALUES ('telemetry', 'ts'), ('telemetry_1m', 'bucket'), ('telemetry_1h', 'bucket'), ('telemetry_1d', 'bucket'))
       AS v(t, k)
CROSS JOIN (SELECT date_trunc('month', now() - interval '8 days', 'UTC') AS lo) AS m;

-- A week of history for the demo robots, ending a day before the last hour above: a sample every
-- 20 minutes and their status messages, in 6-hour cycles (5 hours draining the battery, working
-- then idle, 1 hour charging), robot 4's health slowly falling. Loaded once. Sequence numbers
-- 300 to 803 (samples) and 805 to 973 (status rows, is_status) stay clear of the last hour's.
INSERT INTO telemetry (robot_id, fleet_id, seq, ts, status, battery_level, health_score, pose, metrics)
SELECT r.id, r.fleet_id, 300 + g.i, h.ts, h.status, h.battery,
       round(least(100, r.health_score + CASE WHEN r.id = '70000000-0000-4000-8000-000000000004'
                                              THEN (504 - g.i) * 0.016 ELSE 0 END + 0.5 * sin(g.i / 11.0))::numeric, 2),
       r.last_pose,
       jsonb_build_object(
         'BATTERY_SOC', h.battery,
         'CPU_USAGE', round((CASE WHEN h.status = 'WORKING' THEN 55 ELSE 20 END + 8 * sin(g.i / 5.0))::numeric, 2),
         'MEMORY_USAGE', round((50 + 5 * cos(g.i / 7.0))::numeric, 2),
         'MOTOR_TEMPERATURE', round((CASE WHEN h.status = 'WORKING' THEN 52 ELSE 35 END + 4 * sin(g.i / 9.0))::numeric, 2),
         'VIBRATION', round((CASE WHEN h.status = 'WORKING' THEN 0.4 ELSE 0.05 END + 0.1 * abs(sin(g.i)))::numeric, 3),
         'VELOCITY', round((CASE WHEN h.status = 'WORKING' THEN 0.9 + 0.3 * sin(g.i) ELSE 0 END)::numeric, 2),
         'SIGNAL_STRENGTH', -65)
FROM robots r CROSS JOIN generate_series(0, 503) AS g(i)
CROSS JOIN LATERAL (
  SELECT date_trunc('minute', now()) - interval '8 days' + g.i * interval '20 minutes' AS ts,
         (CASE WHEN g.i % 18 < 9 THEN 'WORKING' WHEN g.i % 18 < 15 THEN 'IDLE' ELSE 'CHARGING' END)::robot_status AS status,
         round((CASE WHEN g.i % 18 < 15 THEN 95 - (g.i % 18) * 4.4 ELSE 33 + (g.i % 18 - 14) * 20 END)::numeric, 1)::float8 AS battery
) AS h
WHERE r.id IN ('70000000-0000-4000-8000-000000000001', '70000000-0000-4000-8000-000000000002',
               '70000000-0000-4000-8000-000000000003', '70000000-0000-4000-8000-000000000004')
  AND NOT EXISTS (SELECT 1 FROM telemetry t WHERE t.robot_id = r.id AND t.seq = 300 AND NOT t.is_status)
ON CONFLICT DO NOTHING;

INSERT INTO telemetry (robot_id, fleet_id, seq, ts, status, metrics, is_status)
SELECT r.id, r.fleet_id, 805 + c.n, c.ts, c.status, '{}', true
FROM robots r
CROSS JOIN LATERAL (
  SELECT g.n, date_trunc('minute', now()) - interval '8 days' + g.n * interval '60 minutes' AS ts,
         (CASE WHEN g.n % 6 < 3 THEN 'WORKING' WHEN g.n % 6 < 5 THEN 'IDLE' ELSE 'CHARGING' END)::robot_status AS status
  FROM generate_series(0, 167) AS g(n) WHERE g.n % 6 IN (0, 3, 5)
  UNION ALL
  -- The robot's current status, from the end of the history on.
  SELECT 168, date_trunc('minute', now()) - interval '25 hours', r.status
) AS c
WHERE r.id IN ('70000000-0000-4000-8000-000000000001', '70000000-0000-4000-8000-000000000002',
               '70000000-0000-4000-8000-000000000003', '70000000-0000-4000-8000-000000000004')
  AND NOT EXISTS (SELECT 1 FROM telemetry t WHERE t.robot_id = r.id AND t.seq = 805 AND t.is_status)
ON CONFLICT DO NOTHING;

-- The rollups and the utilization view of what the seed stored, as the worker would leave them
-- (only the demo robots' minutes without rollups: a database full of other data is left alone).
INSERT INTO telemetry_rollup_pending (robot_id, bucket)
SELECT DISTINCT t.robot_id, date_trunc('minute', t.ts, 'UTC') FROM telemetry t
WHERE t.robot_id IN ('70000000-0000-4000-8000-000000000001', '70000000-0000-4000-8000-000000000002',
                     '70000000-0000-4000-8000-000000000003', '70000000-0000-4000-8000-000000000004')
  AND NOT t.is_status
  AND NOT EXISTS (SELECT 1 FROM telemetry_1m m
                  WHERE m.robot_id = t.robot_id AND m.bucket = date_trunc('minute', t.ts, 'UTC'))
ON CONFLICT DO NOTHING;
SELECT telemetry_rollup(1000000, '-infinity');
REFRESH MATERIALIZED VIEW robot_utilization_daily;
ANALYZE telemetry, telemetry_1m, telemetry_1h, telemetry_1d;

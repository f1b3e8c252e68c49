"""The prefork pool: tasks run in child processes, with hard and soft time limits, recycling and autoscale."""

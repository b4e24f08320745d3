# Process helpers for the scripts: everything is stopped by process id, never by a name or command-line pattern.

# descendants PID: the ids of PID's descendants, deepest first.
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        descendants "$child"
        echo "$child"
    done
}

# stop_tree PID...: kills each PID's descendants (deepest first, so each is reaped by its own parent), then PID,
# and reaps PID when it is a child of this shell.
stop_tree() {
    local pid descendant
    for pid in "$@"; do
        [ -n "$pid" ] || continue
        for descendant in $(descendants "$pid"); do kill -9 "$descendant" 2>/dev/null || true; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# Shared helpers for Sluice's scripts (sourced, not run).

# Find cargo even under `sudo`, whose secure_path drops ~/.cargo/bin.
sluice_find_cargo() {
    if command -v cargo >/dev/null 2>&1; then return 0; fi
    local h
    for h in "${CARGO_HOME:-}" "$HOME/.cargo" "/root/.cargo" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo"}; do
        if [[ -n "$h" && -x "$h/bin/cargo" ]]; then
            export PATH="$h/bin:$PATH"
            return 0
        fi
    done
    echo "cargo not found: install Rust (https://rustup.rs) for this user or root" >&2
    return 1
}

//! Address-to-certificate bindings per list, and the generation counter that tells the daemon
//! they changed.

use super::{Binding, Role};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub(super) fn generation(conn: &Connection) -> rusqlite::Result<i64> {
    let g: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(g.unwrap_or(0))
}

/// Bumps the generation inside the transaction that makes the change, so a reader never sees
/// the new counter with the old bindings.
pub(super) fn bump(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
        [],
    )?;
    Ok(())
}

pub(super) fn of_list(conn: &Connection, list: &str) -> rusqlite::Result<Vec<Binding>> {
    let mut stmt = conn.prepare_cached(
        "SELECT list, address, fingerprint, role, state, show_key_id FROM bindings
         WHERE list = ?1 ORDER BY address",
    )?;
    let rows = stmt.query_map(params![list], |r| {
        Ok(Binding {
            list: r.get(0)?,
            address: r.get(1)?,
            fingerprint: r.get(2)?,
            role: Role::parse(&r.get::<_, String>(3)?),
            state: r.get(4)?,
            show_key_id: r.get::<_, i64>(5)? != 0,
        })
    })?;
    rows.collect()
}

/// Inserts or replaces the binding of `b.address` on `b.list` (its `created` time stays).
pub(super) fn put(tx: &Transaction<'_>, b: &Binding, now: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO bindings (list, address, fingerprint, role, state, show_key_id, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (list, address) DO UPDATE SET fingerprint = excluded.fingerprint,
           role = excluded.role, state = excluded.state, show_key_id = excluded.show_key_id",
        params![
            b.list,
            b.address,
            b.fingerprint,
            b.role.as_str(),
            b.state,
            b.show_key_id as i64,
            now
        ],
    )?;
    Ok(())
}

/// Removes the binding; returns how many rows went (0 or 1).
pub(super) fn remove(tx: &Transaction<'_>, list: &str, address: &str) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM bindings WHERE list = ?1 AND address = ?2",
        params![list, address],
    )
}

#[cfg(test)]
mod tests {
    use super::super::{BindingState, SqliteStore, Store, StoreError};
    use super::*;

    fn binding(state: BindingState) -> Binding {
        Binding {
            list: "l@x".into(),
            address: "a@y".into(),
            fingerprint: "AB".into(),
            role: Role::Owner,
            state,
            show_key_id: true,
        }
    }

    #[test]
    fn bind_unbind_bumps_generation_and_is_shared_between_handles() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(dir.path()).unwrap();
        let b = SqliteStore::open(dir.path()).unwrap();
        let g0 = b.generation().unwrap();
        let bound = binding(BindingState::Active);
        a.bind(&bound).unwrap();
        assert!(b.generation().unwrap() > g0);
        assert_eq!(b.bindings("l@x").unwrap(), vec![bound]);
        assert!(a.unbind("l@x", "a@y").unwrap());
        assert!(!a.unbind("l@x", "a@y").unwrap());
        assert!(b.bindings("l@x").unwrap().is_empty());
    }

    #[test]
    fn binding_state_round_trips_as_its_documented_text() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        for (state, text) in [
            (BindingState::Active, "active"),
            (BindingState::Pending, "pending"),
        ] {
            s.bind(&binding(state)).unwrap();
            // The column keeps the text admins read with sqlite3 and `member list` prints.
            let raw: String = s
                .conn()
                .query_row("SELECT state FROM bindings", [], |r| r.get(0))
                .unwrap();
            assert_eq!(raw, text);
            assert_eq!(state.to_string(), text);
            assert_eq!(text.parse::<BindingState>().unwrap(), state);
            assert_eq!(s.bindings("l@x").unwrap()[0].state, state);
        }
    }

    #[test]
    fn an_unknown_binding_state_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.bind(&binding(BindingState::Active)).unwrap();
        s.conn()
            .execute("UPDATE bindings SET state = 'revoked'", [])
            .unwrap();
        assert!(matches!(s.bindings("l@x"), Err(StoreError::Sql(_))));
        assert!("Active".parse::<BindingState>().is_err());
    }
}

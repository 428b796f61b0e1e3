//! Authentication (right after the handshake) and the administration of
//! users and access rules.

use bytes::{BufMut, BytesMut};

use crate::codec::{put_list, put_string, DecodeError, Reader, Wire};

/// Authenticates the connection. Mechanism `PLAIN`: the user's name and
/// password (send it only over TLS off loopback; the broker keeps only a
/// salted hash).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthenticateRequest {
    /// `PLAIN`.
    pub mechanism: String,
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for AuthenticateRequest {
    // Never a password in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticateRequest")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticateResponse {
    /// Who the connection now acts as.
    pub principal: String,
}

/// Creates a user or sets a user's password.
#[derive(Clone, PartialEq, Eq)]
pub struct UpsertUserRequest {
    /// The user.
    pub name: String,
    /// The new password.
    pub password: String,
}

impl std::fmt::Debug for UpsertUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpsertUserRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Removes a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteUserRequest {
    /// The user.
    pub name: String,
}

/// Lists users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListUsersRequest;

/// The users' names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListUsersResponse {
    /// Names, sorted.
    pub names: Vec<String>,
}

/// One access rule: `principal` may do `operations` on resources of
/// `resource_kind` whose names match `pattern` (`*` at the end: a prefix;
/// `*` alone: all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireAcl {
    /// A user (or `*`: every authenticated principal).
    pub principal: String,
    /// 1 topic, 2 group, 3 lock, 4 cluster.
    pub resource_kind: u8,
    /// Name or prefix pattern.
    pub pattern: String,
    /// Operations, by name: produce, consume, create, delete, describe,
    /// admin, lock.
    pub operations: Vec<String>,
}

/// Adds an access rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddAclRequest {
    /// The rule.
    pub acl: WireAcl,
}

/// Removes an access rule (the same principal, resource and pattern; the
/// operations listed are taken away).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveAclRequest {
    /// The rule.
    pub acl: WireAcl,
}

/// Lists access rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListAclsRequest;

/// The access rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListAclsResponse {
    /// The rules.
    pub acls: Vec<WireAcl>,
}

impl Wire for AuthenticateRequest {
    const MIN_LEN: usize = 6;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.mechanism);
        put_string(b, &self.user);
        put_string(b, &self.password);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AuthenticateRequest {
            mechanism: r.string("mechanism")?,
            user: r.string("user")?,
            password: r.string("password")?,
        })
    }
}

impl Wire for AuthenticateResponse {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.principal);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AuthenticateResponse {
            principal: r.string("principal")?,
        })
    }
}

impl Wire for UpsertUserRequest {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        put_string(b, &self.password);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(UpsertUserRequest {
            name: r.string("name")?,
            password: r.string("password")?,
        })
    }
}

impl Wire for DeleteUserRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(DeleteUserRequest {
            name: r.string("name")?,
        })
    }
}

impl Wire for ListUsersRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListUsersRequest)
    }
}

impl Wire for ListUsersResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.names);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListUsersResponse {
            names: r.list("user count")?,
        })
    }
}

impl Wire for WireAcl {
    const MIN_LEN: usize = 2 + 1 + 2 + 4;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.principal);
        b.put_u8(self.resource_kind);
        put_string(b, &self.pattern);
        put_list(b, &self.operations);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let principal = r.string("principal")?;
        let resource_kind = r.u8("resource kind")?;
        if !(1..=4).contains(&resource_kind) {
            return Err(DecodeError::BadValue("resource kind"));
        }
        Ok(WireAcl {
            principal,
            resource_kind,
            pattern: r.string("pattern")?,
            operations: r.list("operation count")?,
        })
    }
}

impl Wire for AddAclRequest {
    const MIN_LEN: usize = WireAcl::MIN_LEN;

    fn put(&self, b: &mut BytesMut) {
        self.acl.put(b);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AddAclRequest {
            acl: WireAcl::get(r)?,
        })
    }
}

impl Wire for RemoveAclRequest {
    const MIN_LEN: usize = WireAcl::MIN_LEN;

    fn put(&self, b: &mut BytesMut) {
        self.acl.put(b);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(RemoveAclRequest {
            acl: WireAcl::get(r)?,
        })
    }
}

impl Wire for ListAclsRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListAclsRequest)
    }
}

impl Wire for ListAclsResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.acls);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListAclsResponse {
            acls: r.list("acl count")?,
        })
    }
}

/// A principal's quota: byte rates for produce and fetch, and how many
/// connections it may hold at once. 0 means unlimited. A broker slows a
/// principal over its rates down (it delays, it never drops).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireQuota {
    /// A user, or `*`: every principal without a quota of its own.
    pub principal: String,
    /// Produced bytes per second (request bytes).
    pub produce_bytes_per_sec: u64,
    /// Fetched and delivered bytes per second (response bytes).
    pub fetch_bytes_per_sec: u64,
    /// Connections at once.
    pub max_connections: u32,
}

/// Sets a principal's quota (replacing the one it had).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetQuotaRequest {
    /// The quota.
    pub quota: WireQuota,
}

/// Removes a principal's quota (it falls back to `*`'s, or none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveQuotaRequest {
    /// The principal.
    pub principal: String,
}

/// Lists quotas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuotasRequest;

/// The quotas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuotasResponse {
    /// The quotas, by principal.
    pub quotas: Vec<WireQuota>,
}

impl Wire for WireQuota {
    const MIN_LEN: usize = 2 + 8 + 8 + 4;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.principal);
        b.put_u64_le(self.produce_bytes_per_sec);
        b.put_u64_le(self.fetch_bytes_per_sec);
        b.put_u32_le(self.max_connections);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireQuota {
            principal: r.string("principal")?,
            produce_bytes_per_sec: r.u64("produce bytes per second")?,
            fetch_bytes_per_sec: r.u64("fetch bytes per second")?,
            max_connections: r.u32("max connections")?,
        })
    }
}

impl Wire for SetQuotaRequest {
    const MIN_LEN: usize = WireQuota::MIN_LEN;

    fn put(&self, b: &mut BytesMut) {
        self.quota.put(b);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SetQuotaRequest {
            quota: WireQuota::get(r)?,
        })
    }
}

impl Wire for RemoveQuotaRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.principal);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(RemoveQuotaRequest {
            principal: r.string("principal")?,
        })
    }
}

impl Wire for ListQuotasRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListQuotasRequest)
    }
}

impl Wire for ListQuotasResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.quotas);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListQuotasResponse {
            quotas: r.list("quota count")?,
        })
    }
}

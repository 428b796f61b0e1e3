//! Users, access rules and quotas, administered over the protocol (the
//! access rules require `admin` on the cluster for these). A single broker
//! applies a change itself; a clustered one commits it through Raft, and
//! every broker takes the committed state.

use std::sync::Arc;

use spool_protocol::requests::{ListAclsResponse, ListQuotasResponse, ListUsersResponse};
use spool_protocol::{ErrorCode, ErrorResponse, Request, Response};

use crate::auth::{Auth, AuthError, Quota, Rule, SecurityChange, SecurityData};
use crate::cluster::node::ClusterNode;
use crate::cluster::security::SecurityChangeError;
use crate::server::errors::error;

pub(crate) fn auth_error(e: &AuthError) -> ErrorResponse {
    let code = match e {
        AuthError::BadCredentials(_) | AuthError::RateLimited(_) => ErrorCode::AuthenticationFailed,
        AuthError::Invalid(_) => ErrorCode::InvalidConfig,
        AuthError::NotFound(_) => ErrorCode::InvalidConfig,
        AuthError::TooManyConnections(_) => ErrorCode::LimitReached,
        AuthError::Storage(_) => ErrorCode::StorageError,
    };
    error(code, e.to_string())
}

/// Answers a user, rule or quota request.
pub async fn handle(
    auth: Option<Arc<Auth>>,
    cluster: Option<&Arc<ClusterNode>>,
    request: Request,
) -> Result<Response, ErrorResponse> {
    let Some(auth) = auth else {
        return Err(error(
            ErrorCode::InvalidConfig,
            "authentication is off on this broker (start it with spool serve --auth)",
        ));
    };
    if let Some(listing) = listing(&auth.data(), &request) {
        return Ok(listing);
    }
    // Hashing a password is slow on purpose: off the async threads.
    let change = crate::simulation::spawn_blocking(move || change_for(request))
        .await
        .unwrap_or_else(|e| Err(AuthError::Invalid(format!("task failed: {e}"))))
        .map_err(|e| auth_error(&e))?;
    match cluster {
        Some(node) => node
            .change_security(&auth, change)
            .await
            .map_err(|e| match e {
                SecurityChangeError::Refused(why) => error(ErrorCode::InvalidConfig, why),
                SecurityChangeError::Unavailable(why) => error(ErrorCode::ClusterUnavailable, why),
                SecurityChangeError::Local(e) => auth_error(&e),
            })?,
        None => {
            crate::simulation::spawn_blocking(move || auth.change(change))
                .await
                .unwrap_or_else(|e| Err(AuthError::Invalid(format!("task failed: {e}"))))
                .map_err(|e| auth_error(&e))?;
        }
    }
    Ok(Response::Done)
}

/// The answer to a listing request, `None` for a change.
fn listing(data: &SecurityData, request: &Request) -> Option<Response> {
    Some(match request {
        Request::ListUsers(_) => ListUsersResponse {
            names: data.users.keys().cloned().collect(),
        }
        .into(),
        Request::ListAcls(_) => ListAclsResponse {
            acls: data.rules.iter().map(Rule::to_wire).collect(),
        }
        .into(),
        Request::ListQuotas(_) => ListQuotasResponse {
            quotas: data
                .quotas
                .iter()
                .map(|(principal, quota)| quota.to_wire(principal))
                .collect(),
        }
        .into(),
        _ => return None,
    })
}

/// The change a request asks for (hashing a new password: slow).
fn change_for(request: Request) -> Result<SecurityChange, AuthError> {
    Ok(match request {
        Request::UpsertUser(r) => SecurityChange::new_user(&r.name, &r.password)?,
        Request::DeleteUser(r) => SecurityChange::DeleteUser(r.name),
        Request::AddAcl(r) => SecurityChange::AddRule(Rule::from_wire(&r.acl)?),
        Request::RemoveAcl(r) => SecurityChange::RemoveRule(Rule::from_wire(&r.acl)?),
        Request::SetQuota(r) => {
            let (principal, quota) = Quota::from_wire(&r.quota);
            SecurityChange::SetQuota { principal, quota }
        }
        Request::RemoveQuota(r) => SecurityChange::RemoveQuota(r.principal),
        other => {
            return Err(AuthError::Invalid(format!(
                "request kind {} is not a security request",
                other.kind()
            )))
        }
    })
}

//! The client side of `/v1/exports`.

use super::{encode, ApiClient, ClientError};
use crate::exports::{ExportStatus, NewExport};
use crate::store::ExportRun;

impl ApiClient {
    pub async fn create_export(&self, new: &NewExport) -> Result<ExportStatus, ClientError> {
        self.post("/v1/exports", new).await
    }

    pub async fn list_exports(&self) -> Result<Vec<ExportStatus>, ClientError> {
        self.get("/v1/exports", &()).await
    }

    pub async fn export_history(&self, name: &str) -> Result<Vec<ExportRun>, ClientError> {
        self.get(&format!("/v1/exports/{}/history", encode(name)), &())
            .await
    }

    /// Runs the export now; a failed run comes back as a run with status `failed`.
    pub async fn run_export(&self, name: &str) -> Result<ExportRun, ClientError> {
        self.post(&format!("/v1/exports/{}/run", encode(name)), &())
            .await
    }
}

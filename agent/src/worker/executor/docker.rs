//! See the executor trait in the parent module.
pub struct DockerExecutor;
impl DockerExecutor {
    pub async fn connect(_node_id: &str) -> Result<super::sim::SimExecutor, super::ExecError> {
        Err(super::ExecError::Runtime(
            "docker executor not built".into(),
        ))
    }
}

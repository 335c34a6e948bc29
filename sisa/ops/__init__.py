"""Operations on a workspace: train, delete (plan and record), commit (execute and recover),
audit, repair, and the ensemble that predicts and reports status."""

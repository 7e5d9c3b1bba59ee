package postgres

// UserAtSQL lets tests explain the query behind UserAt.
const UserAtSQL = userAtSQL
